"""A misspelled config key on the command line (`trainer.max_stepz=3`, `hydra.sweeper.n_trial=2`):
one `error:` line naming it and the closest valid keys, exit status 2, before Hydra runs.

Hydra's own refusal is seven lines ending in a hint about HYDRA_FULL_ERROR, with status 1. The
check composes the config with the command's config-group choices (the first option of a sweep
over them) through Hydra's compose API, then looks up each `a.b=value` override in it. Anything
it cannot judge (added keys `+a.b`, deletions `~a.b`, group choices given by a sweep function, a
compose error of another kind) it leaves to Hydra, which then refuses as before.
"""
import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmpt.errors import ConfigError


def _split(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """(group choices to compose with, dotted keys to look up); None when a choice is a sweep function."""
    choices, keys = [], []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # -m, --config-dir, ... and Hydra's own flags
        key, _, value = arg.partition("=")
        if key.startswith(("+", "~")):
            continue  # an added or deleted key: not expected to exist (+) or Hydra's to judge (~)
        if "." in key:
            keys.append(key)
        elif any(c in value for c in "()[]{}$"):
            return None
        else:
            choices.append(f"{key}={value.split(',')[0]}")  # a sweep over options: its first
    return choices, keys


def _closest(cfg: DictConfig, key: str) -> str:
    """The valid keys nearest to `key`: its siblings under the deepest parent that exists."""
    parts = key.split(".")
    node, parent = cfg, []
    for p in parts[:-1]:
        sub = node.get(p) if isinstance(node, DictConfig) and p in node else None
        if not isinstance(sub, DictConfig):
            break
        node, parent = sub, parent + [p]
    rest = parts[len(parent)]
    names = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    near = difflib.get_close_matches(rest, names, n=3, cutoff=0.5) or sorted(names)[:3]
    return ", ".join(".".join(parent + [n]) for n in near)


def _exists(cfg: DictConfig, key: str) -> bool:
    """Whether `key` names a node of cfg. A mandatory value (`???`, e.g. model=local's name_or_path)
    exists: OmegaConf's select and `in` treat it as absent, so look at the parent's keys."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()


def unknown_key(conf_dir: Path, config_name: str, argv: list[str]) -> ConfigError | None:
    """The first `a.b=value` override of argv naming no key of the composed config, as a ConfigError."""
    split = _split(argv)
    if split is None or not split[1]:
        return None
    choices, keys = split
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name, choices, return_hydra_config=True)
    except Exception:  # an unknown option, a bad value: Hydra's (or refuse_unknown_options') to say
        return None
    finally:
        GlobalHydra.instance().clear()
    for key in keys:
        if not _exists(cfg, key):
            return ConfigError(key, f"no such key (the closest: {_closest(cfg, key)}); "
                               f"to add a new key, write +{key}=...")
    return None


def refuse_unknown_keys(conf_dir: Path, config_name: str, argv: list[str]) -> None:
    err = unknown_key(conf_dir, config_name, argv)
    if err is not None:
        from mmpt.cli import refuse

        refuse(err)
