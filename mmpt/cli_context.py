"""The run context, read from Hydra's state once per job at the door (mmpt/cli.py's main_wrapper).

Hydra's global state is read here and in mmpt/cli.py (the torchrun callback) only; the code below
gets what it needs as a RunContext (tests/test_boundary.py)."""
import math
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from mmpt.context import RunContext, TrialSpec


def run_context() -> RunContext:
    """Everything the run takes from Hydra's state, read once: RunContext() outside a Hydra job."""
    if not HydraConfig.initialized():
        return RunContext()
    hc = HydraConfig.get()
    files = dict(run_dir=Path(hc.runtime.output_dir), job_name=hc.job.name,
                 hydra_yaml=OmegaConf.to_yaml(HydraConfig.instance().cfg), overrides=tuple(hc.overrides.task))
    if hc.mode != RunMode.MULTIRUN:
        return RunContext(**files)
    number = OmegaConf.select(hc, "sweeper.trial", default=None)  # mmpt's sweeper names each job's trial
    return RunContext(**files, sweep=True, job_index=hc.job.num if number is None else int(number),
                      wandb_group=_sweep_group(hc), trials_at_once=trials_at_once(hc, cores()),
                      trial=None if number is None else _trial(hc.sweeper, int(number)))


def _trial(sweeper, number: int) -> TrialSpec:
    """The job's trial of mmpt's sweeper, with the sweep's pruner built here (the job side reports
    to it: mmpt/trial.py)."""
    pruner = sweeper.get("pruner")
    if pruner is not None and pruner.get("_target_"):
        from hydra.utils import instantiate

        pruner = instantiate(pruner)
    else:
        pruner = None
    return TrialSpec(str(sweeper.study_name), OmegaConf.select(sweeper, "storage", default=None), number, pruner)


def _sweep_group(hc) -> str:
    """Runs of one Hydra multirun share a W&B group named after the sweep. A study kept in
    storage (`hydra.sweeper.storage`) is resumed by a later sweep in a new sweep dir, so its group
    is the study name alone; other sweeps add their dir, as study names repeat across presets."""
    study = OmegaConf.select(hc, "sweeper.study_name", default=None)
    if study and OmegaConf.select(hc, "sweeper.storage", default=None):
        return study
    return f"{study}-{Path(hc.sweep.dir).name}" if study else Path(hc.sweep.dir).name


def trials_at_once(hc, cores: int) -> int:
    """How many jobs of this sweep (Hydra config `hc`) the launcher runs at the same time on this machine."""
    launcher = str(hc.launcher.get("_target_", ""))
    batch = hc.sweeper.get("n_jobs") or math.inf  # an Optuna sweeper launches batches of n_jobs
    if "JoblibLauncher" in launcher:
        n = hc.launcher.get("n_jobs") or 1
        n = n if n > 0 else max(1, cores + 1 + n)  # joblib: -1 = all cores, -2 = all but one, ...
    elif launcher.endswith("LocalLauncher"):  # submitit's local executor: one process per job
        n = hc.launcher.get("array_parallelism") or math.inf
    else:
        return 1  # the basic launcher runs jobs one after another; Slurm gives each job its own cores
    return int(min(n, batch, cores))  # more trials than cores: one thread each all the same


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
