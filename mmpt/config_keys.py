"""Config keys added after runs were made, each at the value that does what runs without the key
did. A run that has such a key at that value and a run without it are the same setting: the
report averages them together, and resume=true continues a run started before the key existed."""

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


def drop_defaults(flat: dict) -> dict:
    """A flattened config without the ADDED_LATER and SPLIT_LATER keys that sit at their default."""
    at_default = {**ADDED_LATER, **SPLIT_LATER}
    return {k: v for k, v in flat.items() if not (k in at_default and v == at_default[k])}
