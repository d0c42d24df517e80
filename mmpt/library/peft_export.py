"""`python -m mmpt.library export LIB --to peft --out DIR`: a library as PEFT LoRA folders that
peft's create_arrow_model loads.

    DIR/task_<name>/      adapter_config.json + adapter_model.safetensors, one per task expert
    DIR/general_<name>/   the same for the experts named by --general (GenKnowSub's general experts)
    DIR/base_model/       the backbone (and tokenizer) when it was built in-process

mmpt stores B already times alpha / r, so each folder says lora_alpha = r: PEFT's scaling is then
1 and its update B A is the expert's. base_model_name_or_path is the absolute path of
DIR/base_model (or the backbone's hub name), so the folders load from any working directory.
"""
import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from peft import LoraConfig
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from mmpt.export.base_model import BASE_DIR, base_name, save_base
from mmpt.library.gks import general_names
from mmpt.library.store import LibraryError, refuse_nonempty
from mmpt.models import load

PREFIX = "base_model.model."  # PEFT's key prefix of a tuner's weights


def check_exportable(lib) -> None:
    """Refuse (one line) what PEFT's Arrow cannot hold: experts other than LoRA, or of unequal rank
    or targets (a library holds one rank and target set, but an edited index may say otherwise)."""
    if lib.kind != "lora":
        raise LibraryError(f"library {lib.path} holds {lib.kind} experts; PEFT's Arrow takes LoRA experts only")
    rank, targets = lib.compat.get("rank"), lib.compat.get("targets") or []
    for name in lib.names:
        t = lib.tensors(name)
        for m in targets:
            A, B = t[f"{m}.lora_A"], t[f"{m}.lora_B"]
            if A.shape[0] != rank or B.shape[1] != rank:
                raise LibraryError(f"expert `{name}` has rank {A.shape[0]} at `{m}`, the library says {rank}: "
                                   "PEFT's Arrow needs one rank for every expert")
        if set(k.rsplit(".lora_", 1)[0] for k in t) != set(targets):
            raise LibraryError(f"expert `{name}` adapts other modules than the library's targets: "
                               "PEFT's Arrow needs the same target modules in every expert")


def adapter_config(lib, base: str, fan_in_fan_out: bool, task_type: str) -> dict:
    r = lib.compat["rank"]
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(lib.compat["targets"]),
                        fan_in_fan_out=fan_in_fan_out, task_type=task_type, base_model_name_or_path=base,
                        inference_mode=True)
    return config.to_dict()


def export_peft(lib, out, general=()) -> Path:
    """Write the library's experts as PEFT LoRA folders under `out` (new); return `out`."""
    out = Path(out)
    refuse_nonempty(out)
    check_exportable(lib)
    general = general_names(lib, general)
    model_cfg = OmegaConf.create(lib.index["model"])
    backbone, _, family = load(model_cfg)
    modules = dict(backbone.named_modules())
    fan_in_fan_out = any(isinstance(modules[m], Conv1D) for m in lib.compat["targets"])  # GPT-2's [in, out] weights
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base = base_name(model_cfg)
    if base is None:
        save_base(model_cfg, tmp)
        base = str((out / BASE_DIR).resolve())
    config = adapter_config(lib, base, fan_in_fan_out, family.peft_task_type)
    for name in lib.names:
        folder = tmp / (f"general_{name}" if name in general else f"task_{name}")
        folder.mkdir()
        weights = {f"{PREFIX}{k}.weight": v.contiguous() for k, v in lib.tensors(name).items()}
        save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=sorted))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
