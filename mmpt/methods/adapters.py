"""The one place where LoRA-style layers wrap a backbone's Linear modules.

GPT-2's `Conv1D` is a Linear whose weight is stored transposed ([in, out]); the wrappers only call
the wrapped layer and read its widths through `dims`, so they adapt both kinds the same way.
bitsandbytes' `Linear4bit` / `Linear8bitLt` (quantized backbones, models/quantize.py) are
nn.Linear subclasses with integer weights: the wrappers keep their own weights in float32
(`float_dtype`), feed them the input in that dtype and hand the sum back in the base's output
dtype (8-bit layers compute in fp16); under bf16 autocast on GPU the adapter matmuls run in bf16.
"""
import math
import re

import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmpt.errors import ConfigError

ADAPTABLE = (nn.Linear, Conv1D)
# How configs written before the families held the targets spelled a target set: an interpolation
# into the model config's `targets` block (conf/model/*.yaml had one; old run folders still do).
OLD_SPELLING = re.compile(r"\$\{model\.targets\.(\w+)\}")


def target_pattern(cfg, info, key: str = "target_modules") -> str:
    """The regex `method.<key>` stands for. A bare name (lora, poly, poly_ffn, ia3) picks that set
    of the backbone family's default targets (`Family.targets`, handed over in info["targets"]);
    anything else is the regex itself. An old run folder's `${model.targets.<set>}` reads the
    explicit regex its config still holds, or, where that is unset, the family's set of that name."""
    raw = OmegaConf.to_container(cfg, resolve=False).get(key) if OmegaConf.is_config(cfg) else cfg.get(key)
    old = OLD_SPELLING.fullmatch(raw) if isinstance(raw, str) else None
    if old:
        try:
            value = cfg.get(key)
        except InterpolationResolutionError:  # a config without the old `model.targets` block
            value = None
        if isinstance(value, str):
            return value
        raw = old.group(1)
    targets = info.get("targets") or {}
    if raw in targets:
        return targets[raw]
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"method.{key}", f"expected one of the backbone family's target sets "
                          f"{sorted(targets)} or a regex of Linear module names, got {raw!r}")
    return raw


def transposed(layers) -> bool:
    """Whether the wrapped layers are Conv1D (PEFT's `fan_in_fan_out`: weights stored [in, out])."""
    return any(isinstance(m.base, Conv1D) for m in layers)


def float_dtype(layer) -> torch.dtype:
    """The dtype of adapter weights beside `layer`: its weight's, or float32 for a quantized
    (integer) weight."""
    w = layer.weight
    return w.dtype if w.is_floating_point() else torch.float32


def dims(layer) -> tuple[int, int]:
    """(in, out) widths of an nn.Linear or a transformers Conv1D."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.nf
    return layer.in_features, layer.out_features


class Wrapped(nn.Module):
    """Base of the wrappers below: `base` is the wrapped Linear."""

    @property
    def weight(self):  # T5's FFN reads `wo.weight.dtype`: a wrapper must answer for its Linear
        return self.base.weight


class LoRALinear(Wrapped):
    """y = W x + (alpha / r) * B A dropout(x). B starts at zero, so a fresh adapter changes nothing."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        d_in, d_out = dims(base)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = self.base(x)
        delta = self.dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T @ self.lora_B.T
        return y + (self.scale * delta).to(y.dtype)


def wrap_linears(model: nn.Module, pattern: str, make, key: str = "method.target_modules") -> dict:
    """Replace every nn.Linear (or Conv1D) whose qualified name fully matches `pattern` by `make(linear)`.

    Returns {name: new module}. A pattern that matches nothing is a config error, not a silent no-op.
    """
    regex = re.compile(pattern)
    names = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE) and regex.fullmatch(n)]
    if not names:
        raise ConfigError(key, f"pattern {pattern!r} matches no Linear module of the backbone")
    wrapped = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped[name] = make(getattr(parent, child))
        setattr(parent, child, wrapped[name])
    return wrapped


class IA3Linear(Wrapped):
    """(IA)^3 (Liu et al. 2022): y = l * (W x), one learned scale per output unit, l starts at 1."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.ia3_l = nn.Parameter(torch.ones(dims(base)[1]))

    def forward(self, x):
        y = self.base(x)
        return y * self.ia3_l.to(y.dtype)


def _split(features: int, n_splits: int, what: str) -> int:
    if features % n_splits:
        raise ConfigError("method.n_splits", f"{what} width {features} is not divisible by n_splits={n_splits}")
    return features // n_splits


class PolyLoRALinear(Wrapped):
    """A bank of n_skills LoRA adapters (Polytropon; MHR when n_splits > 1), mixed per example.

    A: [n_splits, n_skills, d_in / n_splits, r], B: [n_splits, n_skills, r, d_out / n_splits].
    `weights` [batch, n_splits, n_skills] is set by the method's `routing` context for one backbone
    call: each split (head) mixes its own block of A and B, and the blocks are concatenated into
    one [d_in, r] and one [r, d_out] matrix per example. n_skills = n_splits = 1 is plain LoRA.
    """

    def __init__(self, base: nn.Linear, n_skills: int, n_splits: int, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base, self.n_splits = base, n_splits
        d_in = _split(dims(base)[0], n_splits, "input")
        d_out = _split(dims(base)[1], n_splits, "output")
        self.lora_A = nn.Parameter(torch.empty(n_splits, n_skills, d_in, rank))
        self.lora_B = nn.Parameter(torch.zeros(n_splits, n_skills, rank, d_out))
        # Kaiming-uniform over the full fan-in, as LoRALinear's A (so n_skills = 1 matches LoRA's scale)
        bound = 1 / math.sqrt(dims(base)[0])
        nn.init.uniform_(self.lora_A, -bound, bound)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.weights = None

    def forward(self, x):
        if self.weights is None:
            raise RuntimeError("PolyLoRALinear called outside the method's routing context")
        w = self.weights.to(self.lora_A.dtype)
        b, r = w.shape[0], self.lora_A.shape[-1]
        A = torch.einsum("bqs,qsdr->bqdr", w, self.lora_A).reshape(b, -1, r)       # [b, d_in, r]
        B = torch.einsum("bqs,qsrd->brqd", w, self.lora_B).reshape(b, r, -1)       # [b, r, d_out]
        h = self.dropout(x.to(self.lora_A.dtype)).reshape(b, -1, x.shape[-1])
        delta = (h @ A @ B).reshape(*x.shape[:-1], -1)
        y = self.base(x)
        return y + (self.scale * delta).to(y.dtype)


class PolyIA3Linear(Wrapped):
    """A bank of n_skills IA3 scale vectors [n_splits, n_skills, d_out / n_splits] (init 1), mixed
    per example and split like PolyLoRALinear. Routing weights sum to 1, so a fresh bank is identity."""

    def __init__(self, base: nn.Linear, n_skills: int, n_splits: int):
        super().__init__()
        self.base = base
        d_out = _split(dims(base)[1], n_splits, "output")
        self.ia3_l = nn.Parameter(torch.ones(n_splits, n_skills, d_out))
        self.weights = None

    def forward(self, x):
        if self.weights is None:
            raise RuntimeError("PolyIA3Linear called outside the method's routing context")
        scale = torch.einsum("bqs,qsd->bqd", self.weights.to(self.ia3_l.dtype), self.ia3_l).reshape(x.shape[0], -1)
        y = self.base(x)
        return y * scale.reshape(x.shape[0], *([1] * (y.dim() - 2)), -1).to(y.dtype)
