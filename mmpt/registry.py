"""One registry style for every kind of extension (methods, routers, fine-tuning types, library
types, extractors, PEFT mappings, backbone families): a name registered together with its class
(or function) and its config.

    METHODS = Registry("method", key="method.name", group="method")

    @dataclass
    class LoRAConfig:           # the kind's option names and types (conf/method/lora.yaml's keys)
        name: str
        rank: int

    @METHODS.register("lora", config=LoRAConfig)
    class LoRA(Method): ...

`config` is a dataclass naming the options the entry reads, with their types. Where the registry
has a config group (`group`: conf/<group>/<name>.yaml, e.g. conf/method/lora.yaml), that YAML is the
one place of each option's default and its comment, and the dataclass holds no defaults for them:
`Entry.defaults()` reads them from the YAML (a kind registered without a YAML, e.g. in a test, falls
back to its dataclass's own defaults). tests/test_registry.py checks that every YAML has exactly its
dataclass's fields and that its values fit their types. `extra` keeps what a kind needs besides (a
fine-tuning type's groups, the PEFT type of a mapping). Registering happens where the class is
defined, and the package that owns the registry imports those modules at its top, so nothing
depends on an import at a file's bottom.
"""
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from omegaconf import OmegaConf

from mmpt.errors import ConfigError

# The application's config groups (train.py's config_path): the project root's conf/.
CONF = Path(__file__).resolve().parents[1] / "conf"


def group_options(path: Path, group: str) -> dict:
    """The options a group file gives its group: the file itself, or for a `# @package _global_`
    file (conf/method/*.yaml, which also set optimizer groups) its `<group>:` block."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if "@package _global_" in "".join(text.splitlines()[:2]):
        data = data.get(group) or {}
    return data


@dataclass(frozen=True)
class Entry:
    name: Any                 # a string, or a tuple for registries keyed by several things
    obj: Any                  # the class or function registered
    config: type | None = None  # dataclass of its options' names and types (None: it has none)
    extra: dict = field(default_factory=dict)
    group: str | None = None  # its registry's config group: the defaults are conf/<group>/<name>.yaml's

    def yaml_path(self) -> Path | None:
        """conf/<group>/<name>.yaml, where the entry's defaults and their comments live, if it exists."""
        path = CONF / self.group / f"{self.name}.yaml" if self.group and isinstance(self.name, str) else None
        return path if path is not None and path.is_file() else None

    def defaults(self) -> dict:
        """The entry's options at their defaults: its YAML's values (interpolations as written), or,
        for an entry without a YAML, its dataclass's own defaults."""
        path = self.yaml_path()
        if path is not None:
            return group_options(path, self.group)
        if self.config is None:
            return {}
        out = {}
        for f in fields(self.config):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out

    def default_config(self, **overrides):
        """An OmegaConf config of the entry's options at their defaults (and `overrides`), checked
        against the dataclass's types: what the YAML of its config group composes to."""
        if self.config is None:
            return OmegaConf.create({**self.defaults(), **overrides})
        return OmegaConf.merge(OmegaConf.structured(self.config), self.defaults(), overrides)

    def option_names(self) -> list[str]:
        return [f.name for f in fields(self.config)] if self.config is not None else []


class Registry:
    """name -> Entry. `kind` names the extension kind in messages, `key` the config key that chooses
    an entry (e.g. `method.name`), so an unknown name is one ConfigError line naming both; `group`
    the conf/ group holding one YAML of defaults per entry (None: the kind has none)."""

    def __init__(self, kind: str, key: str, group: str | None = None):
        self.kind, self.key, self.group = kind, key, group
        self._entries: dict = {}

    def register(self, name, config: type | None = None, **extra):
        """Decorator: register the decorated class or function under `name`; returns it unchanged."""
        if config is not None and not is_dataclass(config):
            raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")

        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice "
                                 f"({self._entries[name].obj!r} and {obj!r})")
            self._entries[name] = Entry(name, obj, config, dict(extra), self.group)
            return obj
        return add

    def unregister(self, name) -> None:
        """Drop an entry (tests that register a kind of their own clean up with it)."""
        self._entries.pop(name, None)

    def get(self, name) -> Entry:
        if name not in self._entries:
            raise ConfigError(self.key, f"expected one of {self.names()}, got {name!r}")
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __getitem__(self, name):
        return self.get(name).obj

    def names(self) -> list:
        """The registered names, in the order they were registered."""
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())


def import_room(package: str, path) -> list[str]:
    """Import every module of a package's folder (its room), so that each registers itself: a new
    entry is one module dropped there, with no import list to extend. Modules whose name starts
    with `_` (helpers) and `base` (the registry's own module) are left out. Returns their names."""
    import importlib
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_") and m.name != "base")
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
