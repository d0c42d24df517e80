"""Library types over prompt and prefix experts (prompt_experts.py): routed (the SMoP / MMPT input
router over the frozen experts; for prefixes MMPT's adaptive masks too) and uniform (their mean,
frozen). The same two types for both kinds."""
from dataclasses import dataclass

from omegaconf import OmegaConf

from mmpt.errors import ConfigError
from mmpt.library.prompt_experts import KINDS, FixedPrefix, FixedPrompt, RoutedPrefixes, RoutedPrompts, stack
from mmpt.library.registry import LIBRARY_TYPES, option


@dataclass
class RoutedOptions:
    """experts.* of conf/finetune_type/routed.yaml: SMoP's / the MMPT reference's router
    (conf/router/input_topk.yaml) and masks (conf/method/prefix_routing.yaml)."""
    route_topk: int
    perturb_router: bool
    router_dropout: float
    adaptive_mask: bool
    mask_init_mean: float
    mask_init_std: float


def routed_options(opts, n_experts: int) -> dict:
    """The routed type's options, checked (each error names its key)."""
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
