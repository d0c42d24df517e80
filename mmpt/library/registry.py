"""The library type registry and what every type's setup shares (option checks, method configs).

LIBRARY_TYPES maps (kind of the library's experts, finetune_type) to a setup function
`(library, opts, backbone, info) -> Method`; types.py documents the contract and imports the
modules that register today's types (types.py, merge_types.py, phatgoose.py).
"""
from omegaconf import OmegaConf

from mmpt.errors import ConfigError
from mmpt.registry import Registry

LIBRARY_TYPES = Registry("library type", key="finetune_type")


def types_of(kind: str) -> list:
    """The finetune_types a library of `kind` experts takes."""
    return [name for k, name in LIBRARY_TYPES.names() if k == kind]


def setup_of(kind: str, ftype: str):
    """The registered entry of (kind, ftype); one line listing the kind's types otherwise."""
    if (kind, ftype) not in LIBRARY_TYPES:
        raise ConfigError("finetune_type", f"a library of {kind} experts takes one of {types_of(kind)}, got {ftype!r}")
    return LIBRARY_TYPES.get((kind, ftype))


def option(opts, key: str, ok, expected: str, prefix: str = "experts"):
    value = opts.get(key)
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{prefix}.{key}", f"expected {expected}, got {value!r}")
    return value


def block(opts, key: str, defaults) -> dict:
    """A type's own options block `experts.<key>` over its dataclass defaults (unset keys keep them)."""
    given = opts.get(key) or {}
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else dict(given)
    fields = vars(defaults)
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"experts.{key}.{unknown[0]}", f"not an option; expected one of {sorted(fields)}")
    return {**fields, **{k: v for k, v in given.items() if v is not None}}


def method_cfg(name: str, **keys):
    return OmegaConf.create({"name": f"library_{name}", **keys})
