"""mmpt's Optuna sweeper: hydra-optuna-sweeper's keys and search-space grammar on Optuna 4+.

What it does beyond a plain ask-launch-tell loop:
- **Shared studies.** Any number of sweep processes (workers), on one machine or many, may run
  with the same `storage` and `study_name`: the study's storage hands out trial numbers, so every
  trial runs once, in the folder named by its number. `n_trials` counts the trials this worker
  runs; `max_trials` caps the trials the study may hold (a trial numbered `max_trials` or above
  is not run).
- **Seeds.** A worker's sampler is seeded with `sampler.seed` + the number of its first trial.
  Two workers never share a first trial, so they draw from different seed streams; one worker on
  the same storage state draws the same points (a resumed study continues with new points rather
  than replaying its first ones, as the study's trial count is that first number).
- **Grids.** The worker that creates a grid study queues each grid point once as a WAITING trial
  and marks the study; workers only take queued points (a storage-side compare-and-set), so no
  point runs twice, and a finished grid runs nothing.
- **Heartbeats.** While its jobs run, a worker stamps its RUNNING trials every
  `heartbeat.interval` seconds. A RUNNING trial not stamped for `heartbeat.grace_period` seconds
  (a killed worker's) is failed by the next worker that starts a batch, and queued again with
  Optuna's RetryHeartbeatStaleTrialCallback (`heartbeat.max_retry` times); heartbeat.py.
- **Pruning.** `pruner` is an Optuna pruner. Each job reports to its trial (mmpt/trial.py) and
  returns `Pruned` when the pruner stops it; the trial is then told PRUNED.
- **torchrun.** `torchrun ... train.py -m` runs each trial in all the processes (DDP or FSDP):
  rank 0 is the worker (storage, ask, tell, heartbeats), the other ranks run the trials it sends
  them. Their jobs run in the sweep's processes, so only the basic launcher goes with it.
Bad settings fail in one line naming the key, before any trial is asked.
"""
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from mmpt import trial as job_side
from mmpt import distributed
from mmpt.errors import ConfigError
from mmpt.storage import masked, open_storage

from . import heartbeat, search_space
from .study import open_study, refuse_foreign_folders

log = logging.getLogger(__name__)

GRID = "mmpt:grid"                # study system attr: the grid points queued in the study (JSON)
OVER_CAP = "mmpt:over_max_trials"  # trial system attr: asked past max_trials by a racing worker, not run
GRID_WAIT_S = 60                  # how long a worker waits for the creator to queue a new grid
IN_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",)


def _int(key: str, value, low: int, none_ok: bool = False):
    if value is None and none_ok:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(key, f"expected {'null or ' if none_ok else ''}an integer >= {low}, got {value!r}")
    return value


class OptunaSweep:
    def __init__(self, sampler, pruner, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                 params=None, custom_search_space=None, max_trials=None, heartbeat=None, load_if_exists=True,
                 **unknown):
        if unknown:  # e.g. hydra-optuna-sweeper's deprecated search_space
            raise ConfigError(f"hydra.sweeper.{sorted(unknown)[0]}", "not a key of mmpt's Optuna sweeper "
                              "(the search space goes under hydra.sweeper.params)")
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.url, self.study_name = direction, storage, study_name
        self.n_trials = _int("hydra.sweeper.n_trials", n_trials, 0)
        self.n_jobs = _int("hydra.sweeper.n_jobs", n_jobs, 1)
        self.max_trials = _int("hydra.sweeper.max_trials", max_trials, 1, none_ok=True)
        if not isinstance(max_failure_rate, (int, float)) or not 0 <= max_failure_rate <= 1:
            raise ConfigError("hydra.sweeper.max_failure_rate", f"expected a share in [0, 1], got {max_failure_rate!r}")
        self.max_failure_rate = float(max_failure_rate)
        self.params, self.custom = params or {}, custom_search_space
        self.load_if_exists = load_if_exists
        hb = heartbeat or {}
        self.beat_every = _int("hydra.sweeper.heartbeat.interval", hb.get("interval"), 1, none_ok=True)
        grace = _int("hydra.sweeper.heartbeat.grace_period", hb.get("grace_period"), 1, none_ok=True)
        self.grace = grace or 2 * (self.beat_every or 0)
        self.max_retry = _int("hydra.sweeper.heartbeat.max_retry", hb.get("max_retry", 0), 0)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # ---- settings ----------------------------------------------------------------------------
    def _directions(self) -> list[str]:
        raw = OmegaConf.to_container(self.direction) if OmegaConf.is_config(self.direction) else self.direction
        raw = raw if isinstance(raw, list) else [raw]
        names = [getattr(d, "name", d) for d in raw]
        if not names or any(d not in ("minimize", "maximize") for d in names):
            raise ConfigError("hydra.sweeper.direction", f"expected minimize, maximize or a list of them, got {raw!r}")
        return names

    def _space(self) -> dict:
        """hydra.sweeper.params; a whole `hydra.sweeper.params={...}` on the command line alone: it
        replaces a preset's space, where Hydra would merge the two (a sweep override on the
        command line, `method.rank=choice(4,8)`, changes one key of it: sweep() adds those)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        given = [str(o) for o in self.config.hydra.overrides.get("hydra", [])]
        for o in reversed(OverridesParser.create().parse_overrides(given)):
            if o.key_or_group == "hydra.sweeper.params" and not o.is_delete() and isinstance(o.value(), dict):
                log.info("the search space is hydra.sweeper.params from the command line (a preset's is replaced)")
                return o.value()
        return dict(self.params)

    def _is_grid(self) -> bool:
        return self.sampler_cfg.get("_target_") == "optuna.samplers.GridSampler"

    def _sampler(self, offset: int):
        """The configured sampler, its seed moved by `offset` (a grid's points are queued: a random sampler)."""
        cfg = OmegaConf.to_container(self.sampler_cfg)
        if self._is_grid():
            cfg = {"_target_": "optuna.samplers.RandomSampler", "seed": cfg.get("seed")}
        cfg.pop("_partial_", None)
        if cfg.get("seed") is not None:
            cfg["seed"] += offset
        try:
            return instantiate(cfg)
        except Exception as e:
            raise ConfigError("hydra.sweeper.sampler", f"{cfg.get('_target_')}: {_cause(e)}") from None

    def _pruner(self):
        target = self.pruner_cfg.get("_target_") if self.pruner_cfg else None
        if not target:
            raise ConfigError("hydra.sweeper.pruner", "expected one of hydra/sweeper/pruner=none|median|"
                              "successive_halving|hyperband|threshold (a YAML with a _target_)")
        try:
            pruner = instantiate(self.pruner_cfg)
        except Exception as e:
            raise ConfigError("hydra.sweeper.pruner", f"{target}: {_cause(e)}") from None
        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise ConfigError("hydra.sweeper.pruner._target_", f"{target} is not an Optuna pruner")
        return pruner

    def _check_pruning(self, pruner, directions: list[str]) -> None:
        if isinstance(pruner, optuna.pruners.NopPruner):
            return
        if len(directions) > 1:
            raise ConfigError("hydra.sweeper.pruner", "Optuna prunes single-objective studies only; "
                              "use hydra/sweeper/pruner=none with several directions")
        launcher = str(self.config.hydra.launcher.get("_target_"))
        if self.url is None and launcher not in IN_PROCESS_LAUNCHERS:
            raise ConfigError("hydra.sweeper.pruner", f"the pruner cannot reach an in-memory study from {launcher}'s "
                              "jobs (other processes): set hydra.sweeper.storage=sqlite:///FILE or journal:///FILE")
        metric = self.config.get("optimized_metric")
        if metric and not str(metric).startswith("val/"):
            raise ConfigError("optimized_metric", f"{metric!r}: a pruned sweep optimizes a val metric "
                              "(reported at every evaluation), e.g. val/acc")

    # ---- the sweep -------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        # Optuna's set-up lines and its notes on experimental features (heartbeat retries) are noise here
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        directions = self._directions()
        params = [f"{k}={v}" for k, v in self._space().items()] + list(arguments)
        space, fixed = search_space.parse(params)
        points = search_space.grid_points(space) if self._is_grid() else None
        pruner = self._pruner()
        self._check_pruning(pruner, directions)
        self._sampler(0)  # a bad sampler fails here, before any trial
        if self._follower():  # torchrun rank > 0: rank 0 opens the study and hands out the trials
            return self._follow()
        storage = open_storage(self.url)
        refuse_foreign_folders(self.config, self.sweep_dir, self.url, self.study_name)
        study, created = open_study(self.url, storage, self.study_name, directions, self.load_if_exists,
                                    sampler=self._sampler(0), pruner=pruner)
        if self.url is None:  # jobs run in this process (basic launcher): they find the study here
            job_side.IN_PROCESS[study.study_name] = storage
        if points is not None:
            self._queue_grid(study, points, created)
        stale = self._fail_stale(study)
        log.info("Optuna study %s (%s): %d trials so far%s; this worker runs up to %d, %d at a time%s, with %s%s",
                 study.study_name, masked(self.url), len(study.trials),
                 f", {stale} stale (a killed worker's) failed" if stale else "", self.n_trials, self.n_jobs,
                 f" (study cap {self.max_trials})" if self.max_trials else "",
                 "a grid" if points is not None else self.sampler_cfg.get("_target_", "").rsplit(".", 1)[-1],
                 "" if isinstance(pruner, optuna.pruners.NopPruner) else f" and {type(pruner).__name__}")
        self._say_if_capped(study)
        ran = 0
        while ran < self.n_trials:
            if ran:
                self._fail_stale(study)
            batch = self._ask(study, min(self.n_jobs, self.n_trials - ran), space, fixed, first=ran == 0)
            if not batch:
                if self.max_trials is not None and not self._is_grid():
                    log.info("the study holds max_trials=%d trials: this worker stops after %d of its %d",
                             self.max_trials, ran, self.n_trials)
                break
            overrides = [self._overrides(t, fixed, study.study_name) for t in batch]
            distributed.broadcast_object((overrides, batch[0].number))  # torchrun: the other ranks run it too
            try:
                with self._heartbeat([t._trial_id for t in batch], storage):
                    returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            except BaseException as e:  # e.g. Ctrl-C: these trials will not finish
                for t in batch:
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                if isinstance(e, ConfigCompositionException):  # every trial would fail the same way
                    raise ConfigError("hydra.sweeper.params", f"trial {batch[0].number}'s values do not fit the "
                                      f"config ({_cause(e)}): a search space over another method's keys? "
                                      "hparams_search presets select theirs; name the method it needs") from None
                raise
            self._tell(study, batch, returns, len(directions))
            ran += len(batch)
        distributed.broadcast_object(None)  # torchrun: the other ranks are done
        self._write_results(study, len(directions))

    def _say_if_capped(self, study) -> None:
        trials = study.get_trials(deepcopy=False)
        cap = self.max_trials
        if cap is not None and len(trials) >= cap and self.n_trials and not any(
                t.state == TrialState.WAITING and t.number < cap for t in trials):
            log.warning("study %s already holds max_trials=%d trials: nothing to run (raise "
                        "hydra.sweeper.max_trials to run more)", study.study_name, cap)

    def _follower(self) -> bool:
        """Whether this process is a rank > 0 of a torchrun sweep (refusing launchers that would
        start the trials outside the process group)."""
        if not distributed.active():
            return False
        launcher = str(self.config.hydra.launcher.get("_target_"))
        if launcher not in IN_PROCESS_LAUNCHERS:
            raise ConfigError("hydra.launcher", f"under torchrun each trial runs in the sweep's own processes; "
                              f"{launcher} would start it elsewhere: use the default (basic) launcher")
        return not distributed.is_main()

    def _follow(self) -> None:
        """Run each batch rank 0 sends, until it sends None; rank 0 tells the study the results.
        Hydra's launch lines are rank 0's to print (ranks > 0 print warnings and errors only)."""
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").addFilter(
            lambda record: record.levelno >= logging.WARNING)
        while (sent := distributed.broadcast_object(None)) is not None:
            overrides, first = sent
            self.launcher.launch(overrides, initial_job_idx=first)

    def _queue_grid(self, study, points: list[dict], created: bool) -> None:
        """Queue the grid points no trial of the study has, once (see the module docstring)."""
        storage, sid = study._storage, study._study_id
        if not created and GRID not in storage.get_study_system_attrs(sid):
            legacy = any("grid_id" in t.system_attrs for t in study.get_trials(deepcopy=False))  # GridSampler's
            deadline = time.time() + (0 if legacy else GRID_WAIT_S)
            while GRID not in storage.get_study_system_attrs(sid) and time.time() < deadline:
                time.sleep(0.5)  # the creator is queueing the points
        queued = json.loads(storage.get_study_system_attrs(sid).get(GRID, "[]"))
        have = {_point_key(t.params or t.system_attrs.get("fixed_params", {})) for t in study.get_trials(deepcopy=False)}
        new = [p for p in points if _point_key(p) not in have and _point_key(p) not in set(queued)]
        for point in new:
            study.enqueue_trial(point)
        if new or created:
            storage.set_study_system_attr(sid, GRID, json.dumps(queued + [_point_key(p) for p in new]))

    def _ask(self, study, k: int, space, fixed, first: bool) -> list:
        trials = []
        for _ in range(k):
            trial_id = self._next_trial_id(study)
            if trial_id is None:
                break
            if first and not trials:  # this worker's seed stream starts at its first trial's number
                number = study._storage.get_trial_number_from_id(trial_id)
                study.sampler = self._sampler(number)
                if self.sampler_cfg.get("seed") is not None and not self._is_grid():
                    log.info("sampler seed %d (%d + first trial %d)", self.sampler_cfg.seed + number,
                             self.sampler_cfg.seed, number)
            trial = optuna.Trial(study, trial_id)
            for name, d in space.items():
                _suggest(trial, name, d)
            for name, value in fixed.items():
                trial.set_user_attr(name, value)
            if self.custom:
                instantiate({"_target_": self.custom, "_partial_": True})(self.config, trial)
                clash = sorted(set(trial.params) & set(fixed))
                if clash:
                    raise ConfigError("hydra.sweeper.custom_search_space", f"sets {clash}, which are fixed values")
            trials.append(trial)
        return trials

    def _next_trial_id(self, study) -> int | None:
        """A queued trial (a grid point, a retried trial) if any is left, else a new one (not for
        grids); None when the grid or max_trials is used up. Optuna's own ask does the same but
        cannot be told to take queued trials only, nor to stop at a cap."""
        storage, cap = study._storage, self.max_trials
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if cap is not None and t.number >= cap:
                continue
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):  # compare-and-set
                    return t._trial_id
            except UpdateFinishedTrialError:
                continue  # another worker finished it meanwhile
        if self._is_grid() or (cap is not None and len(study.get_trials(deepcopy=False)) >= cap):
            return None
        trial_id = storage.create_new_trial(study._study_id)
        if cap is not None and storage.get_trial_number_from_id(trial_id) >= cap:  # another worker took the last place
            storage.set_trial_system_attr(trial_id, OVER_CAP, True)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return None
        return trial_id

    def _overrides(self, trial, fixed: dict, study_name: str) -> list[str]:
        values = {**trial.params, **fixed}
        # the job's trial: its folder (hydra.sweep.subdir) and what mmpt/trial.py reads
        hydra = [f"+hydra.sweeper.trial={trial.number}"]
        if self.study_name is None:  # Optuna named the study: the jobs need that name
            hydra.append(f"hydra.sweeper.study_name={study_name}")
        return [f"{name}={_override_value(v)}" for name, v in values.items()] + hydra

    def _heartbeat(self, trial_ids: list[int], storage):
        """Stamps this worker's running trials while its jobs run (none for an in-memory study:
        no other worker could notice)."""
        every = None if self.url is None else self.beat_every
        return heartbeat.beating(storage, trial_ids, every)

    def _fail_stale(self, study) -> int:
        if self.beat_every is None or self.url is None:
            return 0
        return heartbeat.fail_stale(study, self.grace, self.max_retry)

    def _tell(self, study, batch, returns, n_objectives: int) -> None:
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
                    log.warning("trial %d finished: FAIL, %s", trial.number, _cause(ret._return_value))
            else:
                study.tell(trial, values, skip_if_finished=True)
                log.info("trial %d finished: %s with %s", trial.number, values[0] if n_objectives == 1 else values,
                         trial.params)
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            log.error("%d of %d trials of the batch failed (hydra.sweeper.max_failure_rate=%s)", len(failures),
                      len(returns), self.max_failure_rate)
            for ret in failures:
                if ret.status != JobStatus.COMPLETED:
                    ret.return_value  # re-raises the job's exception, with its traceback
            raise ConfigError("hydra.sweeper.max_failure_rate", f"{len(failures)} of {len(returns)} trials of a "
                              f"batch returned no number (allowed share: {self.max_failure_rate})")

    def _write_results(self, study, n_objectives: int) -> None:
        counts = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "storage": masked(self.url), "trials": counts}
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
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = self.sweep_dir / "optimization_results.yaml"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # other workers may write it too
        OmegaConf.save(OmegaConf.create(results), tmp)
        os.replace(tmp, path)


def _suggest(trial, name: str, d) -> None:
    if isinstance(d, CategoricalDistribution):
        trial.suggest_categorical(name, d.choices)
    elif isinstance(d, IntDistribution):
        trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    else:
        trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def _override_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _point_key(point: dict) -> str:
    return json.dumps({k: point[k] for k in sorted(point)}, default=str)


def _cause(e) -> str:
    """The innermost message of an exception chain (instantiate wraps the constructor's error)."""
    while getattr(e, "__cause__", None) is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
