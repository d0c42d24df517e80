"""A hyperparameter-search trial as its job sees it (the storages both sides open: mmpt/storage/).

mmpt's sweeper (hydra_plugins/mmpt_optuna_sweeper) gives every job its trial through the job's
overrides (`+hydra.sweeper.trial=<number>`, and the study's name), because jobs may run in other
processes or on other machines; the entry point reads them into the run context's TrialSpec
(mmpt/cli_context.py), with the sweep's pruner. The job opens the study's storage (the same URL
the sweeper opened), reports the optimized val metric to its trial after every evaluation (the
recipe hands the Trainer `eval_callback`'s hook), and stops when the pruner says so. The sweeper then
marks the trial PRUNED: the job only returns `Pruned(step, value)` instead of its value.

A `mean_over_seeds` trial reports once per finished seed instead: at step k (1, 2, ...) the mean of
its first k seeds, so a bad trial is pruned before its remaining seeds run.

Optuna is imported inside functions only: mmpt runs without the sweep extra.
"""
import functools
import logging
import math
from dataclasses import dataclass

from mmpt import distributed
from mmpt.context import TrialSpec
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


@functools.lru_cache(maxsize=4)
def reporter(spec: TrialSpec | None) -> TrialReporter | None:
    """The handle on the run context's trial (None outside a trial, or where its study cannot be
    reached from here)."""
    if spec is None:
        return None
    import optuna

    storage = IN_PROCESS.get(spec.study) if spec.storage is None else open_storage(spec.storage)
    if storage is None:
        return None  # an in-memory study in another process (the sweeper refuses that with a pruner)
    study = optuna.load_study(study_name=spec.study, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=spec.pruner)
    return TrialReporter(study, spec.number)


def eval_callback(spec: TrialSpec | None, optimized_metric: str | None, main_key: str):
    """The Trainer's on_eval for a run reporting to trial `spec`: report the optimized val metric
    (`optimized_metric`, else `main_key`) at each evaluation, True to stop; None outside a trial."""
    if spec is None:  # every rank has the same run context
        return None
    # under torchrun rank 0 reports and decides (the Trainer hands its answer to every rank); the
    # others need a hook all the same, so that every rank takes part in that hand-over
    handle = reporter(spec) if distributed.is_main() else None
    if not distributed.broadcast_object(handle is not None):
        return None
    if handle is None:
        return lambda step, metrics: False
    key = optimized_metric or main_key

    def on_eval(step: int, metrics: dict) -> bool:
        return key in metrics and handle.report(step, metrics[key])

    return on_eval


def report_seeds(spec: TrialSpec | None, runs: list[dict], key: str) -> bool:
    """After each seed of a mean_over_seeds trial `spec`: report the mean of the finished seeds at
    step len(runs); True to stop before the next seed."""
    handle = reporter(spec) if distributed.is_main() else None  # torchrun: rank 0 decides for all
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    stop = handle is not None and len(values) == len(runs) and handle.report(len(runs), sum(values) / len(values))
    return bool(distributed.broadcast_object(stop))


def outcome(metrics: dict, key: str):
    """What the job returns to the sweeper: the optimized metric, or Pruned for a pruned trial."""
    if metrics.get("pruned"):
        return Pruned(step=int(metrics["pruned_step"]), value=metrics.get(key))
    return metrics[key]
