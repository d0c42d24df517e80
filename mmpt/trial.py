"""A hyperparameter-search trial as its job sees it (the storages both sides open: mmpt/storage.py).

mmpt's sweeper (hydra_plugins/mmpt_optuna_sweeper) gives every job its trial through the job's
overrides (`+hydra.sweeper.trial=<number>`, and the study's name), because jobs may run in other
processes or on other machines. The job opens the study's storage (`hydra.sweeper.storage`, the
same URL the sweeper opened), reports the optimized val metric to its trial after every
evaluation, and stops when the sweep's pruner (`hydra.sweeper.pruner`) says so. The sweeper then
marks the trial PRUNED: the job only returns `Pruned(step, value)` instead of its value.

A `mean_over_seeds` trial reports once per finished seed instead: at step k (1, 2, ...) the mean of
its first k seeds, so a bad trial is pruned before its remaining seeds run.

Optuna is imported inside functions only: mmpt runs without the sweep extra.
"""
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from mmpt import distributed
from mmpt.storage import first_line, open_storage

log = logging.getLogger(__name__)

# In-memory studies by name: the basic launcher runs jobs in the sweeper's own process, the only
# place an in-memory study can be reached from. The sweeper registers its study here.
IN_PROCESS: dict = {}


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial's job returns to the sweeper instead of its value."""
    step: int                   # the step of the report that was pruned
    value: float | None = None  # the optimized metric of the best evaluation before it


class TrialReporter:
    """The job's handle on its trial: report(step, value) records the value and says whether to stop."""

    def __init__(self, study, number: int):
        import optuna

        self.study, self.number = study, number
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self.trial = optuna.Trial(study, trial_id)
        self.failed = False

    def report(self, step: int, value: float) -> bool:
        """Record `value` at `step`; True when the pruner stops the trial here."""
        if self.failed or value is None or not math.isfinite(float(value)):
            return False
        try:
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
        except Exception as e:  # the storage went away, or the trial was failed as stale: train on
            log.warning("trial %d: reporting to the study failed (%s); the trial goes on unpruned",
                        self.number, first_line(e, ""))
            self.failed = True
            return False
        if prune:
            log.info("trial %d pruned at step %d (%s)", self.number, step, type(self.study.pruner).__name__)
        return prune


def current() -> TrialReporter | None:
    """This job's trial, when it is a trial of mmpt's sweeper whose study it can reach."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweeper = HydraConfig.get().sweeper
    number = OmegaConf.select(sweeper, "trial", default=None)
    if number is None:
        return None
    return _reporter(sweeper.study_name, OmegaConf.select(sweeper, "storage", default=None), int(number),
                     OmegaConf.to_yaml(sweeper.get("pruner") or {}))


@functools.lru_cache(maxsize=4)
def _reporter(study_name: str, url, number: int, pruner_yaml: str) -> TrialReporter | None:
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    storage = IN_PROCESS.get(study_name) if url is None else open_storage(url)
    if storage is None:
        return None  # an in-memory study in another process (the sweeper refuses that with a pruner)
    pruner = OmegaConf.create(pruner_yaml)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=instantiate(pruner) if pruner.get("_target_") else None)
    return TrialReporter(study, number)


def _is_trial_run(run_dir) -> bool:
    """Whether run_dir is the job's own run dir: the seed runs of mean_over_seeds (seed_<s>/) are
    parts of a trial, reported by their parent after each seed rather than at each evaluation."""
    from hydra.core.hydra_config import HydraConfig

    return Path(run_dir).resolve() == Path(HydraConfig.get().runtime.output_dir).resolve()


def eval_callback(cfg, main_key: str, run_dir):
    """The Trainer's on_eval for this run: report the optimized val metric to the trial at each
    evaluation, True to stop; None outside a trial."""
    # under torchrun rank 0 reports and decides (the Trainer hands its answer to every rank); the
    # others need a hook all the same, so that every rank takes part in that hand-over
    reporter = current() if distributed.is_main() else None
    if not distributed.broadcast_object(reporter is not None and _is_trial_run(run_dir)):
        return None
    if reporter is None:
        return lambda step, metrics: False
    key = cfg.get("optimized_metric") or main_key

    def on_eval(step: int, metrics: dict) -> bool:
        return key in metrics and reporter.report(step, metrics[key])

    return on_eval


def report_seeds(runs: list[dict], key: str) -> bool:
    """After each seed of a mean_over_seeds trial: report the mean of the finished seeds at step
    len(runs); True to stop before the next seed."""
    reporter = current() if distributed.is_main() else None  # torchrun: rank 0 decides for all
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    stop = reporter is not None and len(values) == len(runs) and reporter.report(len(runs), sum(values) / len(values))
    return bool(distributed.broadcast_object(stop))


def outcome(metrics: dict, key: str):
    """What the job returns to the sweeper: the optimized metric, or Pruned for a pruned trial."""
    if metrics.get("pruned"):
        return Pruned(step=int(metrics["pruned_step"]), value=metrics.get(key))
    return metrics[key]
