"""PEFT's merges as library types on LoRA experts: ties, dare_linear, dare_ties, magnitude_prune,
task_arithmetic (mmpt/library/merges.py computes them). Each is one frozen update per adapted
module, cached in the library per option set, evaluated zero-shot (nothing trains).

Options: `experts.density` and `experts.majority_sign` (shared with the TIES of earlier mmpt, same
meaning), and the block `experts.merge` (MergeOptions: per-expert weight, the space merged, DARE's seed).
"""
from dataclasses import dataclass

from mmpt.errors import ConfigError
from mmpt.library.merges import MERGES, SPACES, cache_key, merge
from mmpt.library.methods import Merged
from mmpt.library.registry import LIBRARY_TYPES, block, method_cfg, option


@dataclass(frozen=True)
class MergeOptions:
    """experts.merge: what every PEFT merge type reads beyond density and majority_sign."""
    weight: float = 1.0     # each expert's weight (PEFT's `weights`; TIES' lambda): 1 = the sum / disjoint mean as given
    space: str = "delta"    # delta: merge the updates B A (mmpt) | factors: merge A and B apart (PEFT's add_weighted_adapter)
    seed: int = 42          # DARE's random keep masks (torch generator seed)


@dataclass
class MergeTypeOptions:
    """What the merge types read: the flat keys of earlier mmpt's ties (same meaning: density of ΔW
    entries per module) and their own block, experts.merge."""
    density: float = 0.2          # share of each expert's entries kept: by magnitude (ties, magnitude_prune), at random (dare_*)
    majority_sign: str = "total"  # ties, dare_ties: each entry's elected sign: of the sum (total) | of the sign count (frequency)
    merge: MergeOptions = MergeOptions()


def merge_options(opts, name: str) -> dict:
    """The checked options of merge `name` (each error names its key)."""
    if name not in MERGES:
        raise ConfigError("finetune_type", f"unknown merge {name!r}; expected one of {sorted(MERGES)}")
    density = option(opts, "density", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]")
    sign = option(opts, "majority_sign", lambda v: v in ("total", "frequency"), "total or frequency")
    o = block(opts, "merge", MergeOptions())
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
