"""A run's method as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).

The method's registered mapping says which tensors go where (mappings.py); this module adds what is the same for
every method: PEFT's key prefix, the task type, the base model's name, and the file layout that
`PeftModel.from_pretrained(base, DIR)` reads.
"""
import json
from pathlib import Path

from peft.mapping import get_peft_config
from safetensors.torch import save_file

from mmpt import tensorfile
from mmpt.export import prefix_cache
from mmpt.export.mapping import ExportError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# Prompt-learning tuners store bare keys; the others are named by module path under PeftModel.
PROMPT_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING")
TUNER_PREFIX = "base_model.model."


def task_type(model) -> str:
    """PEFT's task type for an mmpt model (it picks the PeftModel subclass that wraps it)."""
    return model.family.peft_task_type


def peft_keys(mapping) -> dict:
    """{PEFT file key: Slot}."""
    prefix = "" if mapping.config["peft_type"] in PROMPT_TYPES else TUNER_PREFIX
    return {prefix + k: slot for k, slot in mapping.tensors.items()}


def tensors(mapping, model) -> dict:
    """{PEFT key: tensor}; refuses (ExportError) what PEFT cannot compute as mmpt does."""
    out = {k: slot.to_peft() for k, slot in peft_keys(mapping).items()}
    if mapping.config["peft_type"] == "PREFIX_TUNING":  # PEFT's prefix sits in the cache: keys rotated
        out = {k: prefix_cache.convert(t, model, mapping.config) for k, t in out.items()}
    return out


def decode(tensor, mapping, model):
    """A PEFT tensor back in mmpt's layout (the inverse of what `tensors` did to it)."""
    if mapping.config["peft_type"] == "PREFIX_TUNING":
        return prefix_cache.convert(tensor, model, mapping.config, inverse=True)
    return tensor


def adapter_config(mapping, model, base: str | None) -> dict:
    config = get_peft_config({**mapping.config, "task_type": task_type(model),
                              "base_model_name_or_path": base, "inference_mode": True})
    return config.to_dict()


def write(out: Path, mapping, weights: dict, model, base: str | None) -> None:
    """Write a PEFT adapter (mapping, and `weights` from `tensors`) into `out` (which exists)."""
    config = adapter_config(mapping, model, base)
    save_file(weights, out / WEIGHTS, metadata={"format": "pt"})
    # PeftConfig.save_pretrained writes the same json (sets are lists there too)
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=sorted))


def read(path) -> tuple[dict, dict]:
    """(adapter_config.json as a dict, {key: tensor}) of a PEFT adapter directory."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ExportError(f"{path} is not a PEFT adapter directory (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path / CONFIG}: cannot read the adapter's config ({tensorfile.reason(e)}); "
                          "expected the JSON PEFT writes") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path / CONFIG}: expected a JSON object (PEFT's adapter config), got {type(config).__name__}")
    return config, tensorfile.load(path / WEIGHTS, ExportError, "adapter weights")
