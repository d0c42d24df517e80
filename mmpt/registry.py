"""One registry style for every kind of extension (methods, routers, fine-tuning types, library
types, extractors, PEFT mappings, backbone families): a name registered together with its class
(or function) and its config.

    METHODS = Registry("method", key="method.name")

    @dataclass
    class LoRAConfig:           # the kind's options and their defaults (conf/method/lora.yaml's keys)
        name: str = "lora"
        rank: int = 8

    @METHODS.register("lora", config=LoRAConfig)
    class LoRA(Method): ...

`config` is a dataclass of the options the entry reads, with the documented defaults; the YAML of
the config group (when there is one) holds the same keys (tests/test_registry.py checks every
YAML against its entry). `extra` keeps what a kind needs besides (a fine-tuning type's groups, the
PEFT type of a mapping). Registering happens where the class is defined, and the package that owns
the registry imports those modules at its top, so nothing depends on an import at a file's bottom.
"""
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import OmegaConf

from mmpt.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: Any                 # a string, or a tuple for registries keyed by several things
    obj: Any                  # the class or function registered
    config: type | None = None  # dataclass of its options (None: it has none)
    extra: dict = field(default_factory=dict)

    def default_config(self, **overrides):
        """An OmegaConf config of the entry's options with their defaults (and `overrides`), typed
        by the dataclass: what the YAML of its config group would compose to."""
        if self.config is None:
            return OmegaConf.create(dict(overrides))
        return OmegaConf.merge(OmegaConf.structured(self.config), overrides)

    def option_names(self) -> list[str]:
        return [f.name for f in fields(self.config)] if self.config is not None else []


class Registry:
    """name -> Entry. `kind` names the extension kind in messages, `key` the config key that chooses
    an entry (e.g. `method.name`), so an unknown name is one ConfigError line naming both."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict = {}

    def register(self, name, config: type | None = None, **extra):
        """Decorator: register the decorated class or function under `name`; returns it unchanged."""
        if config is not None and not is_dataclass(config):
            raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")

        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice "
                                 f"({self._entries[name].obj!r} and {obj!r})")
            self._entries[name] = Entry(name, obj, config, dict(extra))
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


def discover(package: str, path) -> list[str]:
    """Import every module of a package (its `__name__` and `__path__`): the room of an extension
    kind whose modules register themselves (mmpt/library/types/, mmpt/recipes/finetune_types/), so a
    new module there is found without an import list to edit. Returns the modules' names, sorted."""
    import importlib
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
