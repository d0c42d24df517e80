"""The one place where LoRA-style layers wrap a backbone's Linear modules."""
import math
import re

import torch
from torch import nn

from mmpt.errors import ConfigError


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) * B A dropout(x). B starts at zero, so a fresh adapter changes nothing."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        delta = self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        return self.base(x) + self.scale * delta


def wrap_linears(model: nn.Module, pattern: str, make, key: str = "method.target_modules") -> dict:
    """Replace every nn.Linear whose qualified name fully matches `pattern` by `make(linear)`.

    Returns {name: new module}. A pattern that matches nothing is a config error, not a silent no-op.
    """
    regex = re.compile(pattern)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]
    if not names:
        raise ConfigError(key, f"pattern {pattern!r} matches no Linear module of the backbone")
    wrapped = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped[name] = make(getattr(parent, child))
        setattr(parent, child, wrapped[name])
    return wrapped
