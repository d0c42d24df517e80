"""PEFT's merges of LoRA experts (peft.utils.merge_utils), one merged update per adapted module.

    ties, dare_linear, dare_ties, magnitude_prune, task_arithmetic

`space` says what is merged:
- "delta" (mmpt's default): the experts' updates ΔW_e = B_e A_e ([d_out, d_in]) of each module; the
  merge is the module's update. Trimming and sign election then act on the weights the experts
  change, as the TIES paper states them.
- "factors": A_e and B_e separately, as PEFT's LoraModel.add_weighted_adapter does for these
  modes (each expert's weight split as sqrt(|w|) on A and B, its sign on A); the update is
  merge(B) @ merge(A). mmpt stores B times alpha / r, so this equals PEFT's when the experts share
  alpha / r (PEFT puts sqrt(scaling) on both factors instead).
DARE's random masks come from torch's generator seeded with `seed` for the whole merge (modules
in library order; A before B in factor space, as PEFT draws them), so a merge is reproducible.
"""
import math
import warnings

import torch
from peft.utils import merge_utils

# name -> (PEFT's function, whether it takes density, whether it elects a sign)
MERGES = {
    "ties": (merge_utils.ties, True, True),
    "dare_linear": (merge_utils.dare_linear, True, False),
    "dare_ties": (merge_utils.dare_ties, True, True),
    "magnitude_prune": (merge_utils.magnitude_prune, True, False),
    "task_arithmetic": (merge_utils.task_arithmetic, False, False),
}
SPACES = ("delta", "factors")


def apply(name: str, tensors: list, weights: torch.Tensor, density: float, majority_sign: str) -> torch.Tensor:
    """PEFT's `name` merge of `tensors` (one per expert) with per-expert `weights`."""
    fn, takes_density, elects = MERGES[name]
    args = [tensors, weights] + [density] * takes_density + [majority_sign] * elects
    with warnings.catch_warnings():  # density 1 keeps every entry; PEFT warns that it does
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def merge(stack: dict, name: str, density: float = 0.2, majority_sign: str = "total", weight: float = 1.0,
          space: str = "delta", seed: int = 42) -> dict:
    """{module: [d_out, d_in]}: the `name` merge of every module's experts, weight `weight` each."""
    out = {}
    with torch.random.fork_rng(devices=[]):  # DARE's masks: a seeded stream, the caller's RNG untouched
        torch.manual_seed(seed)
        for m, (A, B) in stack.items():
            A, B = A.double(), B.double()
            w = torch.full((len(A),), float(weight), dtype=torch.float64)
            if space == "delta":
                out[m] = apply(name, list(torch.einsum("eor,eri->eoi", B, A)), w, density, majority_sign).float()
            else:  # PEFT's add_weighted_adapter: sqrt(|w|) on each factor, the sign on A
                root = w.abs().sqrt()
                merged_A = apply(name, list(A), root * w.sign(), density, majority_sign)
                merged_B = apply(name, list(B), root, density, majority_sign)
                out[m] = (merged_B @ merged_A).float()
    return out


def cache_key(name: str, density: float, majority_sign: str, weight: float, space: str, seed: int) -> str:
    """The cache file of a merge: every option that changes it (seed only where masks are random)."""
    fn, takes_density, elects = MERGES[name]
    parts = [name] + [f"d{density:g}"] * takes_density + [majority_sign] * elects
    parts += [f"w{weight:g}"] * (not math.isclose(weight, 1.0)) + [space] * (space != "delta")
    parts += [f"s{seed}"] * name.startswith("dare")
    return "_".join(parts)
