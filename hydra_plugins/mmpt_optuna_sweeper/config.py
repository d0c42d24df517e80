"""hydra/sweeper=resumable_optuna: the sweeper's settings, registered in Hydra's ConfigStore by the
plugin itself (Hydra imports this module at each start, as every module under hydra_plugins), so
the application's conf/ holds only its presets (hydra/sweeper/sampler, hydra/sweeper/pruner).

The fields are the keys users set (hydra.sweeper.KEY), with their defaults and comments (the
configuration reference is generated from them). Values are checked here, in `checked()`, rather
than by OmegaConf's types, so that a bad one is one line naming its key, as everywhere in mmpt.
Light on purpose: no Optuna import.
"""
from dataclasses import dataclass, field, fields
from typing import Any, List

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from mmpt.errors import ConfigError

LOAD_IF_EXISTS = (True, False, "only")


@dataclass
class HeartbeatConf:
    # seconds between a worker's heartbeats on its running trials; null = no stale-trial detection
    interval: Any = 60
    # seconds without a heartbeat after which a running trial is failed (killed worker); null = 2 x interval
    grace_period: Any = None
    # times a failed stale trial is queued again (RetryHeartbeatStaleTrialCallback); 0 = never
    max_retry: Any = 1


@dataclass
class ResumableOptunaConf:
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    _target_: str = "hydra_plugins.mmpt_optuna_sweeper.resumable_optuna_sweeper.ResumableOptunaSweeper"  # the plugin class
    _recursive_: bool = False  # the sweeper builds its sampler and pruner itself (one-line errors, per-worker seeds)
    sampler: Any = MISSING      # hydra/sweeper/sampler=tpe|random|grid|gp|qmc|cmaes|nsgaii (conf/hydra/sweeper/sampler/)
    pruner: Any = MISSING       # hydra/sweeper/pruner=none|median|successive_halving|hyperband|threshold (conf/hydra/sweeper/pruner/)
    direction: Any = "minimize"  # minimize | maximize, or a list of them (several objectives: no pruning)
    # null = in memory; sqlite:///FILE; journal:///FILE (journal:////abs/path); postgresql://USER@HOST/DB
    storage: Any = None
    study_name: Any = None      # sweep processes with the same storage and study_name share the study
    # true: resume the study or create it; only: resume, refuse a missing one (a typo); false: create, refuse an existing one
    load_if_exists: Any = True
    n_trials: Any = 20          # trials this sweep process runs
    # cap on the study's trials across all processes (trials numbered >= it are not run); null = none
    max_trials: Any = None
    n_jobs: Any = 2             # trials launched together (a batch; the launcher may run them in parallel)
    max_failure_rate: Any = 0.0  # share of a batch that may fail before the sweep stops
    # the search space: key: choice(...) | range(...) | interval(...) | tag(log, interval(...)) | value
    params: Any = None
    custom_search_space: Any = None  # a function (cfg, trial) adding suggestions of its own, as a dotted path
    heartbeat: HeartbeatConf = field(default_factory=HeartbeatConf)

    @property
    def directions(self) -> list[str]:
        raw = OmegaConf.to_container(self.direction) if OmegaConf.is_config(self.direction) else self.direction
        return raw if isinstance(raw, list) else [raw]

    @property
    def grace(self) -> int:
        return self.heartbeat.grace_period or 2 * (self.heartbeat.interval or 0)


ConfigStore.instance().store(group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaConf,
                             provider="mmpt_optuna_sweeper")


def checked(kwargs: dict) -> ResumableOptunaConf:
    """The settings of the sweeper's keyword arguments (hydra.sweeper.*), each value checked:
    a bad one is a ConfigError naming its key."""
    known = {f.name for f in fields(ResumableOptunaConf)}
    unknown = sorted(set(kwargs) - known)
    if unknown:  # e.g. hydra-optuna-sweeper's deprecated search_space, added with +
        raise ConfigError(f"hydra.sweeper.{unknown[0]}", "not a key of mmpt's Optuna sweeper "
                          "(the search space goes under hydra.sweeper.params)")
    hb = kwargs.pop("heartbeat", None) or {}
    s = ResumableOptunaConf(**{k: v for k, v in kwargs.items() if k != "defaults"},
                            heartbeat=HeartbeatConf(**{f.name: hb.get(f.name, f.default) for f in fields(HeartbeatConf)}))
    _int("n_trials", s.n_trials, 0)
    _int("n_jobs", s.n_jobs, 1)
    _int("max_trials", s.max_trials, 1, none_ok=True)
    _int("heartbeat.interval", s.heartbeat.interval, 1, none_ok=True)
    _int("heartbeat.grace_period", s.heartbeat.grace_period, 1, none_ok=True)
    _int("heartbeat.max_retry", s.heartbeat.max_retry, 0)
    rate = s.max_failure_rate
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ConfigError("hydra.sweeper.max_failure_rate", f"expected a share in [0, 1], got {rate!r}")
    names = [getattr(d, "name", d) for d in s.directions]
    if not names or any(d not in ("minimize", "maximize") for d in names):
        raise ConfigError("hydra.sweeper.direction", f"expected minimize, maximize or a list of them, got {s.direction!r}")
    s.direction = names
    if s.load_if_exists not in LOAD_IF_EXISTS:
        raise ConfigError("hydra.sweeper.load_if_exists", f"expected true, false or only, got {s.load_if_exists!r}")
    return s


def _int(key: str, value, low: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"hydra.sweeper.{key}", f"expected {'null or ' if none_ok else ''}an integer >= {low}, "
                          f"got {value!r}")
