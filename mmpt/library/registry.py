"""The library type registry and what every type's setup shares (reading and checking options,
method configs).

LIBRARY_TYPES maps (kind of the library's experts, finetune_type) to a setup function
`(library, opts, backbone, info) -> Method`, registered with its options dataclass (`config`):
the field names and types of the `experts.*` keys it reads, without defaults. The defaults and
their comments live once, in the type's conf/finetune_type/<name>.yaml. mmpt/library/types/
documents the contract; each of its modules registers types and is found without an import list.
"""
from dataclasses import fields, is_dataclass

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


def own_options(config, experts, prefix: str = "experts") -> dict:
    """The options `config` (a type's dataclass, or None) names, read from the `experts` block.

    Other keys are other types' options: an old run's config holds one flat block of every type's
    keys (before conf/finetune_type/), and a type reading it ignores them. A nested dataclass field
    is a sub-block (experts.merge, experts.phatgoose). A key the block lacks is one line: the
    type's YAML sets every option, so only a hand-made config can miss one.
    """
    if config is None:
        return {}
    block = OmegaConf.to_container(experts) if OmegaConf.is_config(experts) else experts
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ConfigError(prefix, f"expected a block of options {[f.name for f in fields(config)]}, got {block!r}")
    out = {}
    for f in fields(config):
        if f.name not in block:
            raise ConfigError(f"{prefix}.{f.name}", "not set; conf/finetune_type/<type>.yaml sets it "
                              "(finetune.py finetune_type=<type> composes it)")
        value = block[f.name]
        out[f.name] = own_options(f.type, value, f"{prefix}.{f.name}") if is_dataclass(f.type) else value
    return out


def option(opts, key: str, ok, expected: str, prefix: str = "experts"):
    value = opts.get(key)
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{prefix}.{key}", f"expected {expected}, got {value!r}")
    return value


def method_cfg(name: str, **keys):
    return OmegaConf.create({"name": f"library_{name}", **keys})
