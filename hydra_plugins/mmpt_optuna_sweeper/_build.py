"""The sampler and the pruner that the settings name (hydra.sweeper.sampler / pruner: a preset of
conf/hydra/sweeper/sampler or pruner, whose `_target_` is the class), built with one-line errors,
and the checks a pruned sweep needs before any trial.

A new pruner is a module with its class (an Optuna BasePruner) and a preset naming it in
conf/hydra/sweeper/pruner/<name>.yaml: each job builds the same pruner from the same preset
(mmpt/trial.py), so nothing else is edited (docs/sweeps.md#adding-a-pruner).
"""
import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmpt.errors import ConfigError

GRID = "optuna.samplers.GridSampler"  # a grid's points are queued in the study, not sampled
IN_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",)


def is_grid(sampler_cfg) -> bool:
    return sampler_cfg.get("_target_") == GRID


def sampler(sampler_cfg, offset: int):
    """The configured sampler, its seed moved by `offset` (a grid's points are queued: a random sampler)."""
    cfg = OmegaConf.to_container(sampler_cfg)
    if is_grid(sampler_cfg):
        cfg = {"_target_": "optuna.samplers.RandomSampler", "seed": cfg.get("seed")}
    cfg.pop("_partial_", None)
    if cfg.get("seed") is not None:
        cfg["seed"] += offset
    try:
        return instantiate(cfg)
    except Exception as e:
        raise ConfigError("hydra.sweeper.sampler", f"{cfg.get('_target_')}: {cause(e)}") from None


def pruner(pruner_cfg, presets: list[str]):
    """The configured pruner; `presets`: the names of hydra/sweeper/pruner's options, for the message."""
    target = pruner_cfg.get("_target_") if pruner_cfg else None
    if not target:
        raise ConfigError("hydra.sweeper.pruner", f"expected one of hydra/sweeper/pruner={'|'.join(presets)} "
                          "(a YAML with a _target_)")
    try:
        built = instantiate(pruner_cfg)
    except Exception as e:
        raise ConfigError("hydra.sweeper.pruner", f"{target}: {cause(e)}") from None
    if not isinstance(built, optuna.pruners.BasePruner):
        raise ConfigError("hydra.sweeper.pruner._target_", f"{target} is not an Optuna pruner")
    return built


def check_pruning(built, directions: list[str], url, launcher: str, metric) -> None:
    """A pruner needs one objective, a study its jobs can reach, and a metric reported at each evaluation."""
    if isinstance(built, optuna.pruners.NopPruner):
        return
    if len(directions) > 1:
        raise ConfigError("hydra.sweeper.pruner", "Optuna prunes single-objective studies only; "
                          "use hydra/sweeper/pruner=none with several directions")
    if url is None and launcher not in IN_PROCESS_LAUNCHERS:
        raise ConfigError("hydra.sweeper.pruner", f"the pruner cannot reach an in-memory study from {launcher}'s "
                          "jobs (other processes): set hydra.sweeper.storage=sqlite:///FILE or journal:///FILE")
    if metric and not str(metric).startswith("val/"):
        raise ConfigError("optimized_metric", f"{metric!r}: a pruned sweep optimizes a val metric "
                          "(reported at every evaluation), e.g. val/acc")


def cause(e) -> str:
    """The innermost message of an exception chain (instantiate wraps the constructor's error)."""
    while getattr(e, "__cause__", None) is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
