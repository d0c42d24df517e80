"""A run's adapters folded into the backbone's own weights: a plain transformers model directory.

Every adapter layer (methods/adapters.py) is affine in its input once dropout is off, so its
merged Linear is read off the layer itself: the outputs for the unit vectors and for zero give
W and b. No per-method formula, and the merged model computes exactly what the layer did.
Poly runs mix skills per task: the weights of one task (`task_id`) are folded. A quantized
backbone is dequantized first: the merged model is a float model.
"""
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmpt.export.mapping import ExportError
from mmpt.methods.adapters import Wrapped, dims
from mmpt.methods.prefix_attention import ATTN_NAME

# Groups whose parameters live in (or fold into) the backbone's Linear weights
FOLDABLE = {"adapters", "routing", "backbone"}


@torch.no_grad()
def fold(layer: Wrapped) -> nn.Module:
    """The layer's map as a module of its base's kind (nn.Linear, or GPT-2's Conv1D: weight [in, out])."""
    base = layer.base
    d_in, d_out = dims(base)
    probe = torch.cat([torch.zeros(1, d_in), torch.eye(d_in)]).to(base.weight)[None]  # [1, 1 + d_in, d_in]
    out = layer(probe)[0]
    bias, weight = out[0], (out[1:] - out[0]).T  # weight: [d_out, d_in]
    if isinstance(base, Conv1D):
        merged = Conv1D(d_out, d_in).to(base.weight)
        weight = weight.T
    else:
        merged = nn.Linear(d_in, d_out, bias=base.bias is not None).to(base.weight)
    merged.weight.copy_(weight)
    if base.bias is not None:
        merged.bias.copy_(bias)
    elif bias.abs().max() > 0:
        raise ExportError("an adapter adds a bias to a Linear without one; the merged model cannot hold it")
    return merged


def merge(model, task_id: int = 0):
    """The model's backbone with every adapter layer replaced by its folded Linear (in place)."""
    groups = {k for k, v in model.method.param_groups().items() if v}
    if groups - FOLDABLE:
        raise ExportError(f"method {model.method.cfg.name} trains {sorted(groups - FOLDABLE)}, which add "
                          "inputs rather than weights and cannot be merged; use --format peft")
    backbone = model.backbone.eval()
    if getattr(backbone, "is_quantized", False):
        # A 4- or 8-bit run is merged into its dequantized weights: the float weights its quantized
        # layers computed with (4-bit: exactly; 8-bit: up to its fp16 input rounding), in float32.
        # To quantize the merged model again, load it with a BitsAndBytesConfig.
        backbone.dequantize()
    n_tasks = getattr(model.method, "n_tasks", 1)  # skill methods route task ids; others have one
    if not 0 <= task_id < n_tasks:
        raise ExportError(f"--task-id {task_id}: the run has task ids 0..{n_tasks - 1}")
    batch = {"task_id": torch.tensor([task_id])}
    with model.method.routing(batch):
        layers = {n: fold(m) for n, m in backbone.named_modules() if isinstance(m, Wrapped)}
    for name, linear in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, child, linear)
    if backbone.config._attn_implementation == ATTN_NAME:  # mmpt's prefix hook is not needed any more
        backbone.set_attn_implementation("sdpa")
    return backbone
