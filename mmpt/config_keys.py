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


def drop_defaults(flat: dict) -> dict:
    """A flattened config without the ADDED_LATER keys that sit at their default."""
    return {k: v for k, v in flat.items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}
