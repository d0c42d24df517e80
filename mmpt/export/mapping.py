"""What a method declares to be exported: PEFT's config fields for it and where each tensor goes.

Each method's registered mapping (mappings.py) builds a `PeftMapping`; the rest of mmpt/export
turns it into a PEFT adapter directory and back.
"""
from dataclasses import dataclass, field

import torch

from mmpt.errors import MMPTError


class ExportError(MMPTError):
    """The run cannot be written in the requested format (or an adapter cannot be read into it)."""


@dataclass
class Slot:
    """One mmpt tensor in PEFT's file: PEFT value = (mmpt value * scale) reshaped to `shape`."""
    param: torch.Tensor
    shape: tuple | None = None
    scale: float = 1.0

    def to_peft(self) -> torch.Tensor:
        t = self.param.detach().float() * self.scale
        return t.reshape(self.shape or t.shape).contiguous()

    def from_peft(self, t: torch.Tensor) -> torch.Tensor:
        return (t.float() / self.scale).reshape(self.param.shape)


@dataclass
class PeftMapping:
    """config: `peft_type` plus that tuner's fields (r, lora_alpha, target_modules, ...).
    tensors: PEFT key -> Slot. Tuner methods (LoRA, IA3, poly) name keys by the wrapped module's
    path in the backbone ("encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"); the export
    adds PEFT's "base_model.model." prefix. Prompt methods use PEFT's bare keys."""
    config: dict
    tensors: dict = field(default_factory=dict)


def not_expressible(method: str, why: str):
    return ExportError(f"method {method} cannot be written as a PEFT adapter: {why}")
