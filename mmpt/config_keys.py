"""Config keys added after runs were made, each at the value that does what runs without the key
did. A run that has such a key at that value and a run without it are the same setting: the
report averages them together, and resume=true continues a run started before the key existed.
Likewise for keys that changed their spelling (OLD_TARGETS)."""
import re

ADDED_LATER = {
    "model.quantization": "none",
    "model.double_quant": False,
    "model.compute_dtype": None,
    "trainer.gradient_checkpointing": False,
    "trainer.strategy": "ddp",
}

# finetune.py configs before conf/finetune_type/ held one flat `experts` block of every library
# type's options; today a run holds its own type's only. A key of that block at the default it had
# then is what a run without the key does (a type reads its own keys alone), so both drop it.
SPLIT_LATER = {
    "experts.top_k": 4, "experts.temperature": 1.0, "experts.general": [], "experts.density": 0.2,
    "experts.majority_sign": "total", "experts.merge.weight": 1.0, "experts.merge.space": "delta",
    "experts.merge.seed": 42, "experts.phatgoose.top_k": 2, "experts.phatgoose.router_temp": -1.0,
    "experts.granularity": "finegrained", "experts.route_topk": 1, "experts.perturb_router": True,
    "experts.router_dropout": 0.2, "experts.adaptive_mask": True, "experts.mask_init_mean": 2.5,
    "experts.mask_init_std": 0.5,
}


# Before the backbone families held the adapter targets (Family.targets), every conf/model YAML
# had a `targets` block with the family's sets, and the methods named a set as
# `target_modules: ${model.targets.<set>}`; today they write the set's name. The block is read as
# the family's sets: an old run that overrode one (model.targets.lora=...) compares equal to one at
# the family's set here (its own folder still rebuilds with its regex: methods/adapters.py).
OLD_TARGETS = re.compile(r"\$\{model\.targets\.(\w+)\}")


def drop_defaults(flat: dict) -> dict:
    """A flattened config without the ADDED_LATER and SPLIT_LATER keys that sit at their default,
    and with the old spelling of the adapter targets read as today's."""
    at_default = {**ADDED_LATER, **SPLIT_LATER}
    out = {}
    for k, v in flat.items():
        if (k in at_default and v == at_default[k]) or k == "model.targets" or k.startswith("model.targets."):
            continue
        old = OLD_TARGETS.fullmatch(v) if k == "method.target_modules" and isinstance(v, str) else None
        out[k] = old.group(1) if old else v
    return out
