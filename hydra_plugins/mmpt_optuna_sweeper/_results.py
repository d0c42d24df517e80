"""What a batch's jobs return, told to the study, and the sweep's results file."""
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mmpt import trial as job_side
from mmpt.errors import ConfigError
from mmpt.storage import masked

from ._build import cause

log = logging.getLogger(__name__)


def tell(study, batch, returns, n_objectives: int, max_failure_rate: float) -> None:
    """Tell the study each job's outcome: its value(s), PRUNED, or FAIL; stop the sweep when more
    than max_failure_rate of the batch failed."""
    failures = []
    for trial, ret in zip(batch, returns):
        if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, job_side.Pruned):
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d finished: PRUNED at step %d", trial.number, ret.return_value.step)
            continue
        values = None
        if ret.status == JobStatus.COMPLETED:
            try:
                raw = ret.return_value if n_objectives > 1 else [ret.return_value]
                values = [float(v) for v in raw]
                assert len(values) == n_objectives
            except (TypeError, ValueError, AssertionError):
                log.warning("trial %d returned %r, not %d number(s): marked FAIL", trial.number,
                            ret.return_value, n_objectives)
        if values is None:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            failures.append(ret)
            if ret.status != JobStatus.COMPLETED:
                log.warning("trial %d finished: FAIL, %s", trial.number, cause(ret._return_value))
        else:
            study.tell(trial, values, skip_if_finished=True)
            log.info("trial %d finished: %s with %s", trial.number, values[0] if n_objectives == 1 else values,
                     trial.params)
    if failures and len(failures) / len(returns) > max_failure_rate:
        log.error("%d of %d trials of the batch failed (hydra.sweeper.max_failure_rate=%s)", len(failures),
                  len(returns), max_failure_rate)
        for ret in failures:
            if ret.status != JobStatus.COMPLETED:
                ret.return_value  # re-raises the job's exception, with its traceback
        raise ConfigError("hydra.sweeper.max_failure_rate", f"{len(failures)} of {len(returns)} trials of a "
                          f"batch returned no number (allowed share: {max_failure_rate})")

def write(study, n_objectives: int, sweep_dir: Path, url) -> None:
    """optimization_results.yaml in the sweep dir: the study's trial counts and its best trial(s)."""
    counts = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                               "storage": masked(url), "trials": counts}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete and n_objectives == 1:
        best = study.best_trial
        results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        log.info("best value %s with %s (trial %d; study: %s)", best.value, best.params, best.number,
                 ", ".join(f"{n} {k}" for k, n in counts.items()))
    elif complete:
        results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
    else:
        log.info("no trial of study %s has completed (%s)", study.study_name,
                 ", ".join(f"{n} {k}" for k, n in counts.items()) or "it has no trials")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "optimization_results.yaml"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # other workers may write it too
    OmegaConf.save(OmegaConf.create(results), tmp)
    os.replace(tmp, path)
