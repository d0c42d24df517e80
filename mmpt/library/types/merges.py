"""PEFT's merges as library types on LoRA experts: ties, dare_linear, dare_ties, magnitude_prune,
task_arithmetic (mmpt/library/merges.py computes them). Each is one frozen update per adapted
module, cached in the library per option set, evaluated zero-shot (nothing trains).

Options (conf/experts/merge.yaml, which each type's conf/finetune_type/<name>.yaml takes in its
defaults list): `experts.density` and `experts.majority_sign` (the same keys and meaning as the TIES
of earlier mmpt) and the block `experts.merge` (per-expert weight, the space merged, DARE's seed).
"""
from dataclasses import dataclass

from mmpt.errors import ConfigError
from mmpt.library.merges import MERGES, SPACES, cache_key, merge
from mmpt.library.methods import Merged
from mmpt.library.registry import LIBRARY_TYPES, method_cfg, option


@dataclass
class MergeOptions:
    """experts.merge: what every PEFT merge type reads beyond density and majority_sign."""
    weight: float
    space: str
    seed: int


@dataclass
class MergeTypeOptions:
    """What the merge types read: the flat keys of earlier mmpt's ties and their own block."""
    density: float
    majority_sign: str
    merge: MergeOptions


def merge_options(opts, name: str) -> dict:
    """The checked options of merge `name` (each error names its key)."""
    if name not in MERGES:
        raise ConfigError("finetune_type", f"unknown merge {name!r}; expected one of {sorted(MERGES)}")
    density = option(opts, "density", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]")
    sign = option(opts, "majority_sign", lambda v: v in ("total", "frequency"), "total or frequency")
    o = opts["merge"]
    option(o, "weight", lambda v: isinstance(v, (int, float)), "a number", "experts.merge")
    option(o, "space", lambda v: v in SPACES, f"one of {list(SPACES)}", "experts.merge")
    option(o, "seed", lambda v: isinstance(v, int), "an integer", "experts.merge")
    return {"density": float(density), "majority_sign": sign, "weight": float(o["weight"]),
            "space": o["space"], "seed": o["seed"]}


def _register(name: str):
    def setup(lib, opts, backbone, info):
        o = merge_options(opts, name)
        deltas = lib.cached(cache_key(name, **o), lambda: merge(lib.lora_stack(), name, **o))
        return Merged(method_cfg(name, **o), backbone, info, lib, deltas)
    setup.__name__ = name
    LIBRARY_TYPES.register(("lora", name), config=MergeTypeOptions, trains=(),
                           check=lambda lib, opts: merge_options(opts, name))(setup)


for _name in MERGES:
    _register(_name)
