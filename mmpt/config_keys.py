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

# Before the backbone families held the adapter targets (Family.targets), every conf/model YAML
# had a `targets` block with the family's sets, and the methods named a set as
# `target_modules: ${model.targets.<set>}`; today they write the set's name. The block is read as
# the family's sets: an old run that overrode one (model.targets.lora=...) compares equal to one at
# the family's set here (its own folder still rebuilds with its regex: methods/adapters.py).
OLD_TARGETS = re.compile(r"\$\{model\.targets\.(\w+)\}")


def drop_defaults(flat: dict) -> dict:
    """A flattened config without the ADDED_LATER keys that sit at their default, and with the old
    spelling of the adapter targets read as today's."""
    out = {}
    for k, v in flat.items():
        if (k in ADDED_LATER and v == ADDED_LATER[k]) or k == "model.targets" or k.startswith("model.targets."):
            continue
        old = OLD_TARGETS.fullmatch(v) if k == "method.target_modules" and isinstance(v, str) else None
        out[k] = old.group(1) if old else v
    return out
