"""Library types over LoRA experts that keep them apart or as they are: uniform (their mean update),
weighted (a learned weight per expert), library_poly (the experts as a poly_lora skill bank)."""
import re
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from mmpt.library.methods import Merged, Weighted, uniform_merge
from mmpt.library.registry import LIBRARY_TYPES, method_cfg
from mmpt.methods.poly import PolyLoRA


@dataclass
class LibraryPolyOptions:
    """experts.* of conf/finetune_type/library_poly.yaml."""
    granularity: str


@LIBRARY_TYPES.register(("lora", "uniform"), trains=())
def lora_uniform(lib, opts, backbone, info):
    deltas = lib.cached("uniform", lambda: uniform_merge(lib.lora_stack()))
    return Merged(method_cfg("uniform"), backbone, info, lib, deltas)


@LIBRARY_TYPES.register(("lora", "weighted"), trains=("routing",))
def weighted(lib, opts, backbone, info):
    return Weighted(method_cfg("weighted"), backbone, info, lib, lib.lora_stack())


@LIBRARY_TYPES.register(("lora", "library_poly"), config=LibraryPolyOptions, trains=("adapters", "routing"))
def library_poly(lib, opts, backbone, info):
    """PolyLoRA with the experts as its skill bank (one split) and a fresh Polytropon row for the
    new task: the skills start as the experts (B stored times alpha / r, so the bank's scale is 1)."""
    stack, rank = lib.lora_stack(), lib.compat["rank"]
    targets = "|".join(re.escape(m) for m in lib.compat["targets"])
    cfg = OmegaConf.create({"name": "poly_lora", "n_skills": len(lib.names), "n_splits": 1, "rank": rank,
                            "alpha": rank, "dropout": 0.0, "target_modules": targets})
    router = OmegaConf.create({"name": "poly", "granularity": opts["granularity"],
                               "temperature": 1.0, "straight_through": False, "dropout": 0.0,
                               "shared_skill": False})
    method = PolyLoRA(cfg, backbone, info, router)
    with torch.no_grad():
        for name, (A, B) in stack.items():
            layer = backbone.get_submodule(name)
            layer.lora_A[0].copy_(A.transpose(1, 2))  # [E, d_in, r]
            layer.lora_B[0].copy_(B.transpose(1, 2))  # [E, r, d_out]
    return method
