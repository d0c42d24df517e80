"""init_from=peft:DIR: a PEFT adapter read into the run's method (then trained on, or only
evaluated with trainer.max_steps=0).

The run's method says what it would export (mappings.peft_mapping); an adapter loads only if it is
exactly that shape: the same PEFT type and settings, the same adapted modules, the same base
model. Anything else is a one-line error naming what differs.
"""
import logging
from pathlib import Path

import torch

from mmpt import tensorfile
from mmpt.errors import ConfigError
from mmpt.export import head, peft_format
from mmpt.export.mapping import ExportError
from mmpt.export.mappings import method_of, peft_mapping
from mmpt.export.base_model import BASE_DIR, base_name
from mmpt.methods.adapters import Wrapped
from mmpt.models import quantize

log = logging.getLogger(__name__)

# PEFT config field -> the mmpt key that sets it (for the error message)
KEY_OF = {"r": "method.rank", "lora_alpha": "method.alpha", "num_virtual_tokens": "method.num_virtual_tokens",
          "n_skills": "method.n_skills", "n_splits": "method.n_splits", "n_tasks": "dataset (its number of tasks)",
          "token_dim": "model", "num_layers": "model", "num_attention_heads": "model",
          "num_transformer_submodules": "model"}
# modules: checked through the tensor keys; fan_in_fan_out: PEFT sets it from the layer type itself
NOT_COMPARED = {"peft_type", "target_modules", "lora_dropout", "fan_in_fan_out"}


def _norm(v):
    return sorted(v) if isinstance(v, (list, set, tuple)) else v


def check_config(config: dict, mapping, method: str, where) -> None:
    want = mapping.config["peft_type"]
    got = config.get("peft_type")
    if got != want:
        hint = f" (method={method_of(got)} reads it)" if method_of(got) else ""
        raise ConfigError("init_from", f"{where} is a PEFT {got} adapter; method {method} needs {want}{hint}")
    for k, v in mapping.config.items():
        if k not in NOT_COMPARED and _norm(config.get(k)) != _norm(v):
            raise ConfigError("init_from", f"{where} has {k}={config.get(k)!r}; this run has {v!r} "
                              f"(set {KEY_OF.get(k, 'method.' + k)} to match)")


def _clean_state(backbone) -> dict:
    """The backbone's own weights under their transformers names (adapter wrappers looked
    through): {name: (parameter, the layer holding it)}."""
    wrapped = {n for n, m in backbone.named_modules() if isinstance(m, Wrapped)}
    state = {}
    for name, p in backbone.named_parameters():
        module, _, leaf = name.rpartition(".")
        if module.endswith(".base") and module[:-5] in wrapped:
            state[f"{module[:-5]}.{leaf}"] = (p, backbone.get_submodule(module))
        elif module not in wrapped:
            state[name] = (p, backbone.get_submodule(module) if module else backbone)
    return state


def _same(mine, t: torch.Tensor) -> bool:
    p, layer = mine
    if quantize.is_quantized_param(p):  # a quantized backbone: the file's float weight, quantized alike
        return quantize.same_weight(layer, t)
    return p.shape == t.shape and torch.equal(p.detach().cpu(), t)


def check_base(config: dict, where: Path, model_cfg, backbone) -> None:
    base = config.get("base_model_name_or_path") or ""
    local = where / base if base and (where / base).is_dir() else Path(base) if base and Path(base).is_dir() else None
    if base and Path(base).name == BASE_DIR and (where / BASE_DIR).is_dir():
        local = where / BASE_DIR  # an export's own base beside it (its config names where it was written)
    mine = base_name(model_cfg)
    if local is not None and list(local.glob("*.safetensors")):
        state = _clean_state(backbone)
        for f in sorted(local.glob("*.safetensors")):
            weights = tensorfile.load(f, lambda m: ConfigError("init_from", m), "base model weights")
            for name, t in weights.items():
                if name not in state or not _same(state[name], t):
                    raise ConfigError("init_from", f"{where}: its base model {local} differs from this run's "
                                      f"model (first at `{name}`); choose the model the adapter was trained on")
        return
    if mine is None or base.rstrip("/").split("/")[-1].lower() != mine.rstrip("/").split("/")[-1].lower():
        raise ConfigError("init_from", f"{where} adapts base model {base!r}; this run's model is "
                          f"{mine or model_cfg.get('build')!r}")


def load_tensors(tensors: dict, mapping, where, model) -> None:
    slots = peft_format.peft_keys(mapping)
    extra, missing = sorted(set(tensors) - set(slots)), sorted(set(slots) - set(tensors))
    if extra or missing:
        what = f"has `{extra[0]}`, which this run lacks" if extra else f"lacks `{missing[0]}`"
        raise ConfigError("init_from", f"{where} {what}: the adapted modules differ (method.target_modules)")
    values = {}
    for key, slot in slots.items():
        want = slot.to_peft().shape
        if tensors[key].shape != want:
            raise ConfigError("init_from", f"{where}: `{key}` has shape {list(tensors[key].shape)}, "
                              f"this run's is {list(want)}")
        try:
            value = slot.from_peft(peft_format.decode(tensors[key], mapping, model))
        except ExportError as e:  # PEFT's prefix cannot mean mmpt's on this backbone
            raise ConfigError("init_from", f"{where}: {e}") from None
        seen = values.setdefault(id(slot.param), (slot.param, value))[1]
        if not torch.equal(seen, value):  # one mmpt parameter under several keys (shared selectors)
            raise ConfigError("init_from", f"{where}: `{key}` differs from the other keys this run shares "
                              "one parameter with (router.granularity)")
    with torch.no_grad():
        for param, value in values.values():
            param.copy_(value)


def init_from(spec, model, model_cfg, tasks) -> None:
    kind, _, path = str(spec).partition(":")
    if kind != "peft" or not path:
        raise ConfigError("init_from", f"expected peft:<adapter directory>, got {spec!r}")
    where = Path(path).expanduser()
    config, tensors = peft_format.read(where)
    mapping = peft_mapping(model.method)
    check_config(config, mapping, model.method.cfg.name, where)
    check_base(config, where, model_cfg, model.backbone)
    load_tensors(tensors, mapping, where, model)
    if model.family.has_heads and not head.load(model, tasks, where):
        log.warning("%s has no %s: the task heads start untrained", where, head.WEIGHTS)
    log.info("init_from: loaded the PEFT adapter %s", where)
