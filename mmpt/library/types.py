"""Library types: how `finetune.py library=DIR finetune_type=T` reuses a library's experts.

LIBRARY_TYPES maps (kind of the library's experts, finetune_type) to a setup function
`(library, opts, backbone, info) -> Method` (opts: the `experts` config block), registered with its
options dataclass (the `experts.*` keys it reads, with their defaults as in conf/finetune.yaml) and
`trains`: the parameter groups that learn, or a function of the built method giving them. Encoder
backbones always train a new head for the task (mmpt/recipes/library.py); a type that trains
nothing on a text-to-text backbone is evaluated as it is (zero-shot). A new type, or the same type
for another kind of expert:

    @LIBRARY_TYPES.register(("lora", "my_merge"), config=MyOptions, trains=())
    def my_merge(lib, opts, backbone, info): ...

LoRA experts: arrow, uniform, ties (merges), weighted (learned weights), library_poly (the experts
as a poly_lora skill bank). Prompt and prefix experts (prompt_experts.py): routed (the SMoP / MMPT
input router over the frozen prompts or prefixes), uniform (their mean, frozen).
"""
import logging
import re
from dataclasses import asdict, dataclass

import torch
from omegaconf import OmegaConf

from mmpt.errors import ConfigError
from mmpt.library import gks, merge_types, phatgoose  # noqa: F401  (merge_types, phatgoose register their types)
from mmpt.library.methods import Arrow, Merged, Weighted, prototypes, uniform_merge
from mmpt.library.prompt_experts import KINDS, FixedPrefix, FixedPrompt, RoutedPrefixes, RoutedPrompts, stack
from mmpt.methods.poly import PolyLoRA
from mmpt.library.registry import LIBRARY_TYPES, block, method_cfg, option, setup_of, types_of  # noqa: F401

log = logging.getLogger(__name__)

@dataclass
class ArrowOptions:
    top_k: int = 4              # experts mixed per token and layer (Ostapenko et al. 2024: k = 4)
    temperature: float = 1.0    # softmax temperature over the top-k |<x, prototype>|
    general: tuple = ()         # GenKnowSub's general experts (gks.py); conf/finetune.yaml's []


@dataclass
class LibraryPolyOptions:
    granularity: str = "finegrained"  # which adapted layers share a routing row (conf/router/poly.yaml)


@dataclass
class RoutedOptions:
    """SMoP's / the MMPT reference's router (conf/router/input_topk.yaml) and masks
    (conf/method/prefix_routing.yaml)."""
    route_topk: int = 1
    perturb_router: bool = True
    router_dropout: float = 0.2
    adaptive_mask: bool = True
    mask_init_mean: float = 2.5
    mask_init_std: float = 0.5


@LIBRARY_TYPES.register(("lora", "arrow"), config=ArrowOptions, trains=())
def arrow(lib, opts, backbone, info):
    """Arrow over the library; with `experts.general` (GenKnowSub, gks.py) over the task experts
    minus the general experts' mean A and B."""
    general = gks.check(lib, "arrow", opts.get("general"))
    names, stack = gks.subtract(lib.lora_stack(), lib.names, general)
    n = len(names)
    top_k = option(opts, "top_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    temperature = option(opts, "temperature", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0")
    if top_k > n:
        log.warning("experts.top_k=%d but the library has %d experts: every expert is used", top_k, n)
    key = "arrow_prototypes" + "".join(f"_gks_{g}" for g in sorted(general))
    protos = lib.cached(key, lambda: prototypes(stack))
    cfg = method_cfg("arrow", top_k=min(top_k, n), temperature=float(temperature), general=general)
    return Arrow(cfg, backbone, info, lib, stack, protos, names)


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
    router = OmegaConf.create({"name": "poly", "granularity": opts.get("granularity", "finegrained"),
                               "temperature": 1.0, "straight_through": False, "dropout": 0.0,
                               "shared_skill": False})
    method = PolyLoRA(cfg, backbone, info, router)
    with torch.no_grad():
        for name, (A, B) in stack.items():
            layer = backbone.get_submodule(name)
            layer.lora_A[0].copy_(A.transpose(1, 2))  # [E, d_in, r]
            layer.lora_B[0].copy_(B.transpose(1, 2))  # [E, r, d_out]
    return method


# -- prompt and prefix experts --
def routed_options(opts, n_experts: int) -> dict:
    """The routed type's `experts.*` options, checked (each error names its key)."""
    defaults = asdict(RoutedOptions())
    opts = {**defaults, **{k: v for k, v in dict(opts).items() if k in defaults and v is not None}}
    number = lambda v: isinstance(v, (int, float))
    option(opts, "route_topk", lambda v: isinstance(v, int) and 1 <= v <= n_experts,
           f"an integer in [1, {n_experts}] (the library's experts)")
    for key in ("perturb_router", "adaptive_mask"):  # option() refuses booleans: it checks numbers
        if not isinstance(opts[key], bool):
            raise ConfigError(f"experts.{key}", f"expected true or false, got {opts[key]!r}")
    option(opts, "router_dropout", lambda v: number(v) and 0 <= v < 1, "a probability in [0, 1)")
    option(opts, "mask_init_mean", number, "a number")
    option(opts, "mask_init_std", lambda v: number(v) and v >= 0, "a number >= 0")
    return opts


def _routed_trains(method) -> tuple:
    """What learns: the groups the routed method has parameters in (no router with one prefix
    expert, no mask with experts.adaptive_mask=false)."""
    return tuple(name for name, params in method.param_groups().items() if params)


def routed(lib, opts, backbone, info):
    experts = stack(lib)
    o = routed_options(opts, len(experts))
    router = {"topk": o["route_topk"], "perturb_router": o["perturb_router"],
              "router_dropout": float(o["router_dropout"]), "gumbel": False}
    if lib.kind == "prompt":
        return RoutedPrompts(OmegaConf.create({"name": "library_routed", **router}), backbone, info, lib, experts,
                             dict(topk=router["topk"], perturb=router["perturb_router"],
                                  dropout=router["router_dropout"]))
    p = experts.shape[1]  # routes of p tokens, one per expert
    cfg = OmegaConf.create({"name": "library_routed", "num_virtual_tokens": p,
                            "num_virtual_tokens_full": p * len(experts), "share_type": "none",
                            "placement": lib.compat["placement"], **router,
                            "apply_adaptive_mask": o["adaptive_mask"], "apply_adaptive_subset_mask": o["adaptive_mask"],
                            "mask_init_mean": float(o["mask_init_mean"]), "mask_init_std": float(o["mask_init_std"])})
    return RoutedPrefixes(cfg, backbone, info, {"name": "input_topk", "gumbel_tau": 1.0}, lib, experts)


def prompt_uniform(lib, opts, backbone, info):
    """The mean prompt / prefix of the library (cached in it), frozen."""
    mean = lib.cached(f"uniform_{lib.kind}", lambda: {"mean": stack(lib).double().mean(0).float()})["mean"]
    cfg = OmegaConf.create({"name": "library_uniform"})
    if lib.kind == "prompt":
        return FixedPrompt(cfg, backbone, info, lib, mean)
    return FixedPrefix(cfg, backbone, info, lib, mean)


for _kind in KINDS:  # the same two types for prompt and prefix experts
    LIBRARY_TYPES.register((_kind, "routed"), config=RoutedOptions, trains=_routed_trains)(routed)
    LIBRARY_TYPES.register((_kind, "uniform"), trains=())(prompt_uniform)
