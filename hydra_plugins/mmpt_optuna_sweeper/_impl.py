"""mmpt's Optuna sweeper, the loop: ask a batch of trials, launch their jobs, tell the study.

hydra-optuna-sweeper's keys and search-space grammar on Optuna 5, and beyond a plain ask-launch-tell loop:
- **Shared studies.** Any number of sweep processes (workers), on one machine or many, may run
  with the same `storage` and `study_name`: the study's storage hands out trial numbers, so every
  trial runs once, in the folder named by its number. `n_trials` counts the trials this worker
  runs; `max_trials` caps the trials the study may hold (a trial numbered `max_trials` or above
  is not run).
- **Seeds.** A worker's sampler is seeded with `sampler.seed` + the number of its first trial.
  Two workers never share a first trial, so they draw from different seed streams; one worker on
  the same storage state draws the same points (a resumed study continues with new points rather
  than replaying its first ones, as the study's trial count is that first number).
- **Grids.** The worker that creates a grid study queues each grid point once as a WAITING trial;
  workers only take queued points, so no point runs twice, and a finished grid runs nothing.
- **Heartbeats.** While its jobs run, a worker beats on its RUNNING trials every
  `heartbeat.interval` seconds; a RUNNING trial without a beat for `heartbeat.grace_period`
  seconds (a killed worker's) is failed by the next worker that starts a batch, and queued again
  (`heartbeat.max_retry` times). Databases use Optuna's own heartbeat, journal files a stamp.
- **Pruning.** `pruner` is an Optuna pruner. Each job reports to its trial (mmpt/trial.py) and
  returns `Pruned` when the pruner stops it; the trial is then told PRUNED.
- **torchrun.** `torchrun ... train.py -m` runs each trial in all the processes (DDP or FSDP):
  rank 0 is the worker (storage, ask, tell, heartbeats), the other ranks run the trials it sends
  them. Their jobs run in the sweep's processes, so only the basic launcher goes with it.
Bad settings fail in one line naming the key, before any trial is asked.

The parts: config.py (the settings, registered in Hydra's ConfigStore), __search_space.py (the
grammar), _build.py (sampler and pruner), _study.py (the study, grid, trial numbers, heartbeats:
all of Optuna's private API), this file (the loop), _results.py (telling the study, the results file).
"""
import logging
import warnings
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from mmpt import distributed
from mmpt import trial as job_side
from mmpt.errors import ConfigError
from mmpt.storage import masked

from . import _build, _results, _search_space, _study
from ._build import IN_PROCESS_LAUNCHERS, cause
from .config import checked

log = logging.getLogger(__name__)


class OptunaSweep:
    def __init__(self, **kwargs):
        self.settings = s = checked(kwargs)
        self.sampler_cfg, self.pruner_cfg = s.sampler, s.pruner
        self.url, self.study_name = s.storage, s.study_name
        self.n_trials, self.n_jobs, self.max_trials = s.n_trials, s.n_jobs, s.max_trials
        self.max_failure_rate = float(s.max_failure_rate)
        self.params, self.custom = s.params or {}, s.custom_search_space

    hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # ---- settings ----------------------------------------------------------------------------
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
        return _build.is_grid(self.sampler_cfg)

    def _sampler(self, offset: int):
        return _build.sampler(self.sampler_cfg, offset)

    def _pruner(self):
        presets = self.hydra_context.config_loader.get_group_options(  # the app's search path: its config's
            "hydra/sweeper/pruner", config_name=self.config.hydra.job.config_name) if self.hydra_context else []
        pruner = _build.pruner(self.pruner_cfg, presets)
        _build.check_pruning(pruner, self.settings.directions, self.url, str(self.config.hydra.launcher.get("_target_")),
                             self.config.get("optimized_metric"))
        return pruner

    # ---- the sweep -------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        # Optuna's set-up lines and its notes on experimental features (heartbeat retries) are noise here
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        directions = self.settings.directions
        params = [f"{k}={v}" for k, v in self._space().items()] + list(arguments)
        space, fixed = _search_space.parse(params)
        points = _search_space.grid_points(space) if self._is_grid() else None
        pruner = self._pruner()
        self._sampler(0)  # a bad sampler fails here, before any trial
        if self._follower():  # torchrun rank > 0: rank 0 opens the study and hands out the trials
            return self._follow()
        _study.refuse_foreign_folders(self.config, self.sweep_dir, self.url, self.study_name)
        study, created, self.beats = _study.open_study(self.settings, sampler=self._sampler(0), pruner=pruner)
        if self.url is None:  # jobs run in this process (basic launcher): they find the study here
            job_side.IN_PROCESS[study.study_name] = _study.storage_of(study)
        if points is not None:
            _study.queue_grid(study, points, created)
        stale = self.beats.fail_stale(study)
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
                self.beats.fail_stale(study)
            batch = self._ask(study, min(self.n_jobs, self.n_trials - ran), space, fixed, first=ran == 0)
            if not batch:
                if self.max_trials is not None and not self._is_grid():
                    log.info("the study holds max_trials=%d trials: this worker stops after %d of its %d",
                             self.max_trials, ran, self.n_trials)
                break
            overrides = [self._overrides(t, fixed, study.study_name) for t in batch]
            distributed.broadcast_object((overrides, batch[0].number))  # torchrun: the other ranks run it too
            try:
                with self.beats.beating(study, batch):
                    returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            except BaseException as e:  # e.g. Ctrl-C: these trials will not finish
                for t in batch:
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                if isinstance(e, ConfigCompositionException):  # every trial would fail the same way
                    raise ConfigError("hydra.sweeper.params", f"trial {batch[0].number}'s values do not fit the "
                                      f"config ({cause(e)}): a search space over another method's keys? "
                                      "hparams_search presets select theirs; name the method it needs") from None
                raise
            _results.tell(study, batch, returns, len(directions), self.max_failure_rate)
            ran += len(batch)
        distributed.broadcast_object(None)  # torchrun: the other ranks are done
        _results.write(study, len(directions), self.sweep_dir, self.url)

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

    def _ask(self, study, k: int, space, fixed, first: bool) -> list:
        trials = []
        for _ in range(k):
            trial_id = _study.claim(study, self.max_trials, self._is_grid(), self.beats)
            if trial_id is None:
                break
            if first and not trials:  # this worker's seed stream starts at its first trial's number
                number = _study.number(study, trial_id)
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

    def _overrides(self, trial, fixed: dict, study_name: str) -> list[str]:
        values = {**trial.params, **fixed}
        # the job's trial: its folder (hydra.sweep.subdir) and what mmpt/cli_context.py reads into the run context
        hydra = [f"+hydra.sweeper.trial={trial.number}"]
        if self.study_name is None:  # Optuna named the study: the jobs need that name
            hydra.append(f"hydra.sweeper.study_name={study_name}")
        return [f"{name}={_override_value(v)}" for name, v in values.items()] + hydra

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
