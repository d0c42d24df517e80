"""The adapter layers by hand: a LoRA layer adds exactly scale * B A x to its Linear."""
import pytest
import torch
from torch import nn

from mmpt.methods.adapters import LoRALinear, PolyLoRALinear


@pytest.mark.parametrize("rank,alpha", [(4, 8), (2, 1), (8, 32)])
def test_lora_output_change_is_scale_times_b_a_x(rank, alpha):
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank, alpha, dropout=0.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(rank, 6))
        layer.lora_B.copy_(torch.randn(5, rank))
    x = torch.randn(3, 7, 6)
    expected = (alpha / rank) * torch.einsum("or,ri,bti->bto", layer.lora_B, layer.lora_A, x)
    assert torch.allclose(layer(x) - base(x), expected, atol=1e-5)


def test_one_skill_poly_lora_adds_the_same_change():
    """PolyLoRA with one skill and one split is plain LoRA: the same scale * B A x."""
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = PolyLoRALinear(base, n_skills=1, n_splits=1, rank=2, alpha=6, dropout=0.0)
    A, B = torch.randn(2, 6), torch.randn(4, 2)
    with torch.no_grad():
        layer.lora_A.copy_(A.T[None, None])  # [splits, skills, d_in, r]
        layer.lora_B.copy_(B.T[None, None])  # [splits, skills, r, d_out]
    x = torch.randn(3, 5, 6)
    layer.weights = torch.ones(3, 1, 1)
    assert torch.allclose(layer(x) - base(x), 3.0 * x @ A.T @ B.T, atol=1e-5)
