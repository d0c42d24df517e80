"""What train.py and finetune.py share: the run context (Hydra's state, read here once), seeds
averaging, sweep-friendly errors, one-line failures, and (a Hydra callback) one run dir for all
torchrun processes.

This is the door: below it (mmpt/runs.py, mmpt/trial.py, the recipes and the engine) nothing reads
Hydra; they get a `mmpt.context.RunContext` (tests/test_boundary.py).

Light on purpose: train.py imports it before Hydra composes, and a refused command (an unknown
option, a misspelled key, a setting refused from the config alone) must not wait for torch or
transformers. Those are imported inside the functions that run a command.
"""
import json
import logging
import os
import signal
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from mmpt.cli_context import cores as cores_here, run_context
from mmpt.context import RunContext
from mmpt.errors import ConfigError, MMPTError

log = logging.getLogger("mmpt")


def over_seeds(fn, cfg, ctx: RunContext = RunContext()) -> dict:
    """Train once per seed of `mean_over_seeds` (each in <run>/seed_<s>) and write their mean."""
    from mmpt import trial
    from mmpt import distributed
    from mmpt.runs import run_dir

    seeds = list(cfg.mean_over_seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError("mean_over_seeds", f"expected a list of integer seeds, got {seeds!r}")
    out, runs, pruned = run_dir(cfg), [], False
    for seed in seeds:
        sub = cfg.copy()
        with open_dict(sub):
            sub.seed, sub.mean_over_seeds = seed, None
            sub.paths.output_dir = str(out / f"seed_{seed}")
        # the seed runs are parts of the trial: it hears of them after each seed, not at each evaluation
        runs.append(fn(sub, replace(ctx, trial=None)))
        # in a sweep's trial: report the mean so far at step len(runs); a pruned trial skips the rest
        pruned = trial.report_seeds(ctx.trial, runs, cfg.get("optimized_metric") or runs[0].get("optimized_metric_key"))
        if pruned and len(runs) < len(seeds):
            break
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    mean.update({f"{k}_std": statistics.pstdev([r[k] for r in runs]) for k in keys if "/" in k})
    mean.update(seeds=[int(s) for s in seeds[:len(runs)]], optimized_metric_key=runs[0].get("optimized_metric_key"))
    if pruned:
        mean.update(pruned=True, pruned_step=len(runs))
    if distributed.is_main():
        (out / "metrics.json").write_text(json.dumps(mean, indent=1, sort_keys=True))
    return mean


def main_wrapper(fn, cfg):
    """Run fn(cfg, ctx) with this job's run context and return the optimized metric.

    A user error (MMPTError) exits with status 2 and one line, no traceback. Inside a sweep it is
    re-raised instead, so the sweeper records the trial as failed and goes on. Outside a sweep it
    is printed once (the error line; not a log line too).
    """
    from mmpt import trial
    from mmpt import distributed
    from mmpt.runs import check_command, claim_run_dir

    ctx = run_context()
    try:
        with distributed.session():
            check_command(cfg)  # before anything is written (TorchrunRunDir checked it before Hydra's run dir)
            plan = run_threads(cfg, ctx.trials_at_once)
            claim_run_dir(cfg, ctx)  # .hydra/ and the log file; refuses to resume into another run
            set_threads(plan, ctx.sweep)
            metrics = over_seeds(fn, cfg, ctx) if cfg.get("mean_over_seeds") else fn(cfg, ctx)
    except MMPTError as e:
        if ctx.sweep:
            log.error("%s", e)
            raise
        refuse(e)
    key = cfg.get("optimized_metric") or metrics.get("optimized_metric_key")
    if key not in metrics and not metrics.get("pruned"):
        raise ConfigError("optimized_metric", f"{key!r} is not among the run's metrics {sorted(metrics)[:10]}")
    return trial.outcome(metrics, key)  # the metric, or Pruned(step) for the sweeper


def refuse_unknown_options(conf_dirs: list[Path], argv: list[str]) -> None:
    """Refuse `group=option` overrides naming no option of one of the config dirs' groups, in one line.

    Hydra's own refusal is a dozen lines (search path included). Checked: the leaf groups of the
    dirs (method, dataset, ..., hydra/sweeper/pruner), whose options are all files there; not the
    groups Hydra and its plugins fill (hydra/launcher, hydra/sweeper), and nothing when the
    command adds a config dir. Sweep values (`method=lora,prefix`) are checked one by one.
    """
    if any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in argv):
        return
    for arg in argv:
        key, eq, value = arg.lstrip("+").partition("=")
        groups = [d / key for d in conf_dirs if (d / key).is_dir()] if eq and "." not in key else []
        if not groups or arg.startswith("~") or any(p.is_dir() for g in groups for p in g.iterdir()):
            continue
        if any(c in value for c in "()[]{}$") or value in ("", "null"):
            continue  # a sweep function, an interpolation or an emptied slot: Hydra's to judge
        options = sorted({p.stem for g in groups for p in g.glob("*.yaml")})
        for option in (o.strip() for o in value.split(",")):
            if option not in options:
                refuse(ConfigError(key, f"no option {option!r} (expected one of: {', '.join(options)})"))


def run_threads(cfg, at_once: int = 1) -> tuple[int | None, int, int]:
    """(torch CPU threads for this run or None for torch's default, cores, trials at once):
    `trainer.threads`, else in a sweep whose launcher runs several trials side by side on this
    machine, each its share (cores // trials at once), so that they share the cores instead of
    each taking all of them."""
    threads = cfg.trainer.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError("trainer.threads", f"expected null (automatic) or an integer >= 1, got {threads!r}")
    cores = cores_here()
    if threads is None and at_once > 1:
        threads = max(1, cores // at_once)
    return threads, cores, at_once


def set_threads(plan: tuple[int | None, int, int], sweep: bool = False) -> None:
    import torch

    threads, cores, at_once = plan
    if threads is not None:
        torch.set_num_threads(threads)
    if sweep:
        log.info("pid %d: %d torch threads (%d cores, %d trials at once)", os.getpid(), torch.get_num_threads(),
                 cores, at_once)


def refuse_before_run_dir(config: DictConfig) -> None:
    """A single run's refusals that its config alone decides (mmpt.runs.check_command), before
    Hydra makes the run dir: one `error:` line (from rank 0 only under torchrun), exit 2, nothing
    written."""
    from mmpt.runs import check_command

    try:
        check_command(config)
    except MMPTError as e:
        refuse(e)


def refuse(err) -> None:
    """A refused command: one `error:` line (from rank 0 alone under torchrun), exit status 2."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"error: {err}", file=sys.stderr, flush=True)
    _end_torchrun_agent()
    sys.exit(2)


def _end_torchrun_agent() -> None:
    """torchrun answers a worker's non-zero exit with a 30-line ChildFailedError traceback after
    the refusal's one line. Every worker refuses alone (the same config, the same check), so the
    first worker of each node ends its node's torchrun agent instead, which then prints nothing
    (the command's exit status is then 137, SIGKILL's)."""
    if not os.environ.get("TORCHELASTIC_RUN_ID") or int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return
    parent = os.getppid()
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return
    if b"torchrun" in command or b"torch.distributed.run" in command:
        os.kill(parent, signal.SIGKILL)


class TorchrunRunDir(Callback):
    """Under torchrun, every process runs in rank 0's run dir and only rank 0 writes Hydra's files.

    Each process composes its own config, so `${now:...}` in hydra.run.dir resolves once per
    process: processes that start either side of a second (or any two with a sub-second format)
    made several run dirs, and every rank wrote .hydra/ and each line of train.log. Before Hydra
    makes the dir, the processes join the process group and take rank 0's resolved path; ranks > 0
    then save no .hydra/, log no file and print warnings and errors only.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        refuse_before_run_dir(config)
        if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
            return
        from mmpt import distributed

        distributed.init()
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the run dir
        run_dir = distributed.broadcast_object(str(config.hydra.run.dir))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
            if not distributed.is_main():
                config.hydra.output_subdir = None
                _console_warnings_only(config.hydra.job_logging)


    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from mmpt import distributed

        distributed.leave()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep under torchrun (`torchrun ... train.py -m`): its trials run in all processes
        (mmpt's sweeper: rank 0 asks and tells, the others follow), in rank 0's sweep dir, which
        every trial's config takes through the sweep's Hydra overrides."""
        if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
            return
        from mmpt import distributed

        distributed.init()
        HydraConfig.instance().set_config(config)
        sweep_dir = distributed.broadcast_object(str(config.hydra.sweep.dir))
        quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{quoted}'")

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from mmpt import distributed

        if distributed.active() and not distributed.is_main():  # a sweep's trial on rank > 0: warnings only
            logging.getLogger().setLevel(logging.WARNING)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from mmpt import distributed

        distributed.leave()


def _console_warnings_only(job_logging: DictConfig | None) -> None:
    """Drop the file handlers of a logging dictConfig and raise the root level to WARNING."""
    if not job_logging:
        return
    handlers = job_logging.get("handlers") or {}
    files = [name for name, h in handlers.items() if "FileHandler" in str(h.get("class", ""))]
    for name in files:
        del handlers[name]
    if job_logging.get("root") is not None:
        job_logging.root.handlers = [h for h in job_logging.root.get("handlers", []) if h not in files]
        job_logging.root.level = "WARNING"
