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


def _split(argv: list[str]) -> tuple[list[str], list[str], dict] | None:
    """(group choices to compose with, dotted keys to look up, {group: its swept options}); None
    when a choice is a sweep function."""
    choices, keys, swept = [], [], {}
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
            swept[key] = [v.strip() for v in value.split(",")]
    return choices, keys, swept


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
    choices, keys, swept = split
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name, choices, return_hydra_config=True)
            for key in keys:
                if not _exists(cfg, key):
                    return _owners(conf_dir, config_name, choices, cfg, key) or ConfigError(
                        key, f"no such key (the closest: {_closest(cfg, key)}); to add a new key, write +{key}=...")
            return _swept_types(config_name, choices, swept, cfg, keys)
    except Exception:  # an unknown option, a bad value: Hydra's (or refuse_unknown_options') to say
        return None
    finally:
        GlobalHydra.instance().clear()
    return None


def _swept_types(config_name: str, choices: list[str], swept: dict, cfg: DictConfig, keys: list[str]):
    """A key that one swept option of a type-naming group (below) lacks: `-m finetune_type=arrow,ties
    experts.top_k=2` would fail at ties' trial; `++experts.top_k=2` gives it to every type, and the
    types that do not read it ignore it."""
    from hydra import compose

    for group, options in swept.items():
        if not isinstance(cfg.get(group), str):
            continue
        rest = [c for c in choices if not c.startswith(f"{group}=")]
        for option in options[1:]:
            other = compose(config_name, [*rest, f"{group}={option}"])
            missing = [k for k in keys if not _exists(other, k)]
            if missing:
                return ConfigError(missing[0], f"not an option of {group}={option} (swept); to give it to the "
                                   f"{group}s that read it, write ++{missing[0]}=...")
    return None


def _owners(conf_dir: Path, config_name: str, choices: list[str], cfg: DictConfig, key: str) -> ConfigError | None:
    """`key` as an option of another choice of a group that names what it chose (conf/finetune_type:
    each option sets `finetune_type: <name>` and only its own `experts.*` keys): `experts.general`
    with finetune_type=ties is arrow's option, not a misspelling. Composes each other option of
    such a group, on this error path only."""
    from hydra import compose

    for group in sorted(p for p in Path(conf_dir).iterdir() if p.is_dir()):
        chosen = cfg.get(group.name)
        if not isinstance(chosen, str):
            continue
        rest = [c for c in choices if not c.startswith(f"{group.name}=")]
        owners = [p.stem for p in sorted(group.glob("*.yaml")) if p.stem != chosen
                  and _exists(compose(config_name, [*rest, f"{group.name}={p.stem}"]), key)]
        if owners:
            return ConfigError(key, f"not an option of {group.name}={chosen}; it is one of "
                               f"{group.name}={' | '.join(owners)}")
    return None


def refuse_unknown_keys(conf_dir: Path, config_name: str, argv: list[str]) -> None:
    err = unknown_key(conf_dir, config_name, argv)
    if err is not None:
        from mmpt.cli import refuse

        refuse(err)
