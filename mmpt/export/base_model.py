"""The base model an export points to: a hub name or directory, or a copy saved beside the adapter."""
import os
from pathlib import Path

from omegaconf import OmegaConf

from mmpt.models import load_backbone

MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"  # what model=minilm's packaged checkpoint is
BASE_DIR = "base_model"  # beside the adapter, for backbones built in-process (no hub name)


def base_name(model_cfg) -> str | None:
    """The name or path a user loads the run's base model from; None when it was built in-process."""
    if model_cfg.get("build") == "minilm":
        return MINILM_HUB
    if model_cfg.get("build") not in ("pretrained", "local"):  # t5_tiny and other tiny builds
        return None
    name = model_cfg.name_or_path
    return os.path.abspath(os.path.expanduser(name)) if os.path.isdir(os.path.expanduser(name)) else name


def save_base(model_cfg, out: Path) -> str:
    """Save a fresh copy of an in-process backbone (same init seed, so the run's base) to out/base_model.

    A quantized run's base is saved in float, as a hub checkpoint is: loaded with the run's
    BitsAndBytesConfig it is the run's 4-bit (or 8-bit) backbone, and without one its float source."""
    model_cfg = OmegaConf.merge(model_cfg, {"quantization": "none", "double_quant": False, "compute_dtype": None})
    backbone, tokenizer = load_backbone(model_cfg)
    backbone.save_pretrained(out / BASE_DIR)
    tokenizer.save_pretrained(out / BASE_DIR)
    return BASE_DIR


def base_reference(out: Path) -> str:
    """What an export at `out` with its base saved beside it (save_base) puts in
    `base_model_name_or_path`: the absolute path of out/base_model, so that PEFT's
    AutoPeftModel*.from_pretrained(out) and transformers' PEFT loading, which resolve the name
    against the current directory, load it from anywhere. A folder moved elsewhere still has its
    base beside it, which mmpt's importer looks for first."""
    return str(Path(out).resolve() / BASE_DIR)
