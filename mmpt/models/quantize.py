"""Quantized frozen backbones (QLoRA-style): `model.quantization=none|nf4|fp4|int8`.

The choice becomes a transformers `BitsAndBytesConfig`, and the backbone is loaded through
`from_pretrained(..., quantization_config=...)`, which swaps its Linear layers (and GPT-2's
Conv1D) for bitsandbytes' `Linear4bit` / `Linear8bitLt`; embeddings, norms and the LM head stay
in float. Backbones built in-process from a config (t5_tiny, llama_tiny, gpt2_tiny) are saved to
a temporary directory and loaded back the same way (about 0.1-1 s at their size), so every
backbone is quantized by the one code path a hub checkpoint takes. The quantized weights cannot
train (they are integers): `method=full` is refused before anything is loaded, FSDP (which cannot
shard them) before training (engine/sharding.py), and finetune type F trains the float weights only.

Adapters (methods/adapters.py) wrap the quantized layers like any Linear and keep their own
weights in float32.
"""
import importlib
import logging
import os
import tempfile

import torch

from mmpt.errors import ConfigError

KINDS = ("none", "nf4", "fp4", "int8")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def kind(cfg) -> str:
    """The model config's quantization (configs written before the key existed: none)."""
    value = cfg.get("quantization") or "none"
    if value not in KINDS:
        raise ConfigError("model.quantization", f"expected one of {list(KINDS)}, got {value!r}")
    return value


def quantized(cfg) -> bool:
    return kind(cfg) != "none"


def bitsandbytes():
    """The bitsandbytes module, or a one-line error saying how to install it."""
    try:
        return importlib.import_module("bitsandbytes")  # its import-time notices: mmpt/__init__.py
    except ImportError:
        raise ConfigError("model.quantization", "quantized backbones need the bitsandbytes package, which is "
                          "not installed: pip install 'bitsandbytes>=0.50' (scripts/install.sh installs it)") from None


def bnb_config(cfg):
    """The transformers BitsAndBytesConfig for a model config, or None (quantization: none).

    Checks every quantization key, so that a bad value fails before anything is loaded."""
    k = kind(cfg)
    double, compute = cfg.get("double_quant", False), cfg.get("compute_dtype")
    if not isinstance(double, bool):
        raise ConfigError("model.double_quant", f"expected true or false, got {double!r}")
    if compute is not None and compute not in DTYPES:
        raise ConfigError("model.compute_dtype", f"expected null or one of {list(DTYPES)}, got {compute!r}")
    if k in ("none", "int8") and (double or compute is not None):
        key = "model.double_quant" if double else "model.compute_dtype"
        raise ConfigError(key, f"applies to 4-bit backbones (model.quantization=nf4 or fp4), not to "
                          f"quantization={k}: leave it at its default")
    if k == "none":
        return None
    bitsandbytes()  # first: transformers' BitsAndBytesConfig imports it too
    from transformers import BitsAndBytesConfig

    if k == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    # Matmuls of the dequantized 4-bit weights: bf16 on GPU (QLoRA's choice), fp32 on CPU, where
    # bf16 matmuls are slow and lossy.
    dtype = DTYPES[compute] if compute else (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=k, bnb_4bit_use_double_quant=double,
                              bnb_4bit_compute_dtype=dtype)


def load_kwargs(cfg) -> dict:
    """Extra `from_pretrained` keywords that load the backbone quantized ({} when it is not)."""
    config = bnb_config(cfg)
    if config is None:
        return {}
    from mmpt import distributed  # the process's device: quantized weights are made on it

    return {"quantization_config": config, "device_map": {"": distributed.device()}}


def rebuild(model, kwargs: dict):
    """A backbone built in-process from its config, quantized: saved and loaded back through
    from_pretrained with `kwargs` (load_kwargs); unchanged when kwargs is empty."""
    if not kwargs:
        return model
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing" / "Loading weights" bars in every run's log
    try:
        with tempfile.TemporaryDirectory(prefix="mmpt-quantize-") as tmp:
            _save_own_copy(model, tmp)
            return type(model).from_pretrained(tmp, dtype=torch.float32, **kwargs)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _save_own_copy(model, path: str) -> None:
    """The model's config and weights in `path`, written by this process whatever its rank.

    Not save_pretrained: with a process group up (torchrun) it writes on rank 0 only, so every
    other rank found its own temporary directory empty. safetensors' save_model keeps one name
    per tied tensor, which from_pretrained ties again from the config."""
    from safetensors.torch import save_model

    model.config.save_pretrained(path)
    save_model(model, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def _not_the_int8_cast(record) -> bool:
    return "inputs will be cast from" not in record.getMessage()


def settle(model):
    """After loading: keep every 4-bit weight in its storage format. On CPUs with AVX512-BF16,
    bitsandbytes would otherwise repack a weight at its first no-grad evaluation into another
    layout computed by another kernel, so evaluation would not compute what training computes.
    8-bit layers warn at every call that fp32 inputs are cast to fp16 (which is how LLM.int8()
    works): that one message is dropped."""
    if getattr(model, "is_quantized", False):
        bnb = bitsandbytes()
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = False
        cast_log = logging.getLogger("bitsandbytes.autograd._functions")
        if _not_the_int8_cast not in cast_log.filters:
            cast_log.addFilter(_not_the_int8_cast)
    return model


def check_method(model_cfg, name: str, method_cls) -> None:
    """Refuse a method that trains the backbone's own weights on a quantized backbone."""
    if quantized(model_cfg) and getattr(method_cls, "trains_backbone", False):
        raise ConfigError("method", f"{name} trains the backbone's weights, which a {kind(model_cfg)} backbone "
                          "holds as frozen integers: choose an adapter, prompt or prefix method, or "
                          "model.quantization=none")


def is_quantized_param(p) -> bool:
    """A bitsandbytes weight (stored as integers: it cannot train)."""
    return not p.is_floating_point()


@torch.no_grad()
def same_weight(layer, full: torch.Tensor) -> bool:
    """Whether a quantized layer's weight is exactly the float weight `full` quantized the same
    way (an adapter's base model check: same float backbone, same quantization)."""
    bnb = bitsandbytes()
    F = bnb.functional
    param = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        qs = param.quant_state
        if tuple(qs.shape) != tuple(full.shape):
            return False
        q, s = F.quantize_4bit(full.to(param.device, qs.dtype), blocksize=qs.blocksize,
                               compress_statistics=param.compress_statistics, quant_type=qs.quant_type,
                               quant_storage=param.quant_storage)
        return torch.equal(F.dequantize_4bit(q, s), F.dequantize_4bit(param.data, qs))
    if isinstance(layer, bnb.nn.Linear8bitLt):
        if tuple(param.shape) != tuple(full.shape):
            return False
        # the row scales move from the weight to the layer's state at its first forward
        scb = param.SCB if getattr(param, "SCB", None) is not None else layer.state.SCB
        cb, want, _ = F.int8_vectorwise_quant(full.to(param.device, torch.float16).contiguous())
        return torch.equal(cb, param.data) and torch.equal(want, scb)
    return False
