"""A run's context: what the entry points learn from Hydra, read once at the door and passed down.

train.py and finetune.py (through mmpt/cli.py's `run_context`) are the only readers of Hydra's
global state. What the code below them needs of it - where the job's run folder is, which job of
which sweep it is, the trial it reports to - travels as this frozen object, so that mmpt/runs.py,
mmpt/trial.py, the recipes and the engine work the same when called as a library (tests, notebooks,
`python -m mmpt.evaluate`), with `RunContext()`: no Hydra run folder, no sweep, no trial.
"""
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrialSpec:
    """The sweep trial a job reports to (mmpt's sweeper, hydra_plugins/mmpt_optuna_sweeper)."""
    study: str             # the study's name
    storage: str | None    # its storage URL; None: in memory, reachable in the sweeper's process only
    number: int            # the trial's number in the study (it names the job's folder too)
    # the sweep's Optuna pruner, built at the door from hydra.sweeper.pruner (not part of the
    # trial's identity: mmpt/trial.py keeps one handle per trial)
    pruner: object = field(default=None, compare=False)


@dataclass(frozen=True)
class RunContext:
    """Who and where a run is. The defaults describe a library call: no Hydra job around it."""
    run_dir: Path | None = None      # Hydra's job folder, where claim_run_dir writes .hydra/ and the log;
                                     # None: the caller owns the folder (paths.output_dir)
    job_name: str = ""               # Hydra's job name: the log file is <job_name>.log
    hydra_yaml: str = ""             # .hydra/hydra.yaml: Hydra's own config of this job
    overrides: tuple[str, ...] = ()  # .hydra/overrides.yaml: the command's overrides
    sweep: bool = False              # a job of a multirun (-m): its errors go to the sweeper
    job_index: int | None = None     # in a sweep: the trial number (mmpt's sweeper) or Hydra's job number
    wandb_group: str | None = None   # in a sweep: the W&B group its runs share
    trials_at_once: int = 1          # jobs of this sweep the launcher runs side by side on this machine
    trial: TrialSpec | None = None   # the trial this run reports its evaluations to (pruning)
