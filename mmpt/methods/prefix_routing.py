"""Multi-mask Prefix Tuning (MMPT): routed and shared deep prefixes, gated per token and layer.

Per example (the Forward section of the MMPT spec):
    routing = router(mean frozen input embeddings)                       p: [B, R], top-k
    routed  = sum_topk p_r * P_route[route r]                            [B, m, W]
    P       = P_shared | P_shared + routed | [P_shared; routed] | routed   (share_type only|add|prepend|none)
    gate    = sigmoid(sum_r p_r M_r)  (subset mask, soft over ALL routes) | sigmoid(M') | none   [B, T, S]
W = S * 2 * H * d_head for the S sites (self-attention layers) the placement names; table_to_state
sends row block s of P, times gate[..., s], to site s for K and V: layer l's prefix and mask go to
layer l. There is no reparameterisation MLP and no auxiliary loss (as in the reference).

Only parameters that can change the output exist: no routed pool with share_type=only, no shared
prefix with share_type=none, no router when R = 1 or when nothing routed reaches the output
(share_type=only without a subset mask). param_groups() still names all four groups, the absent
ones empty, so that the per-group learning rates of conf/method/prefix_routing.yaml apply to
every variant (the engine refuses configured groups a method does not return).
"""
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.errors import ConfigError
from mmpt.methods.base import METHODS, PLACEMENTS, Method, choose, positive
from mmpt.methods.prefix_attention import table_to_state
from mmpt.routers.input_router import InputRouter, flag, route_stats, router_options

SHARE_TYPES = ("only", "add", "prepend", "none")


def _number(cfg, key: str, low: float = float("-inf")) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"method.{key}", f"expected a number >= {low}, got {value!r}")
    return float(value)


def mask_kind(cfg) -> str | None:
    """'subset' (per-route masks mixed by p), 'shared' (one mask) or None."""
    adaptive, subset = flag(cfg, "apply_adaptive_mask"), flag(cfg, "apply_adaptive_subset_mask")
    if subset and not adaptive:
        raise ConfigError("method.apply_adaptive_subset_mask", "the subset mask is the per-route form of "
                          "the adaptive mask: set method.apply_adaptive_mask=true, or turn both off")
    return "subset" if subset else "shared" if adaptive else None


@dataclass
class PrefixRoutingConfig:
    """Option names and types; defaults and comments: conf/method/prefix_routing.yaml."""
    name: str
    num_virtual_tokens: int
    num_virtual_tokens_full: int
    num_shared_virtual_tokens: int
    share_type: str
    topk: int
    perturb_router: bool
    router_dropout: float
    gumbel: bool
    apply_adaptive_mask: bool
    apply_adaptive_subset_mask: bool
    mask_init_mean: float
    mask_init_std: float
    placement: str


@METHODS.register("prefix_routing", config=PrefixRoutingConfig)
class PrefixRouting(Method):
    uses_router = True
    # the eval stats shown on screen at the end of a run; every stat is in metrics.json/jsonl
    summary_stats = ("router/max_load", "router/entropy", "mask/gate_mean")

    def __init__(self, cfg, backbone, info, router_cfg):
        super().__init__(cfg, backbone, info)
        self.sites = self.placement_sites(choose(cfg, "placement", PLACEMENTS))
        m, full = positive(cfg, "num_virtual_tokens"), positive(cfg, "num_virtual_tokens_full")
        if full % m:
            raise ConfigError("method.num_virtual_tokens_full", f"must be a multiple of "
                              f"method.num_virtual_tokens ({m}): routes R = F / m, got F = {full}")
        self.m, self.n_routes = m, full // m
        self.share = choose(cfg, "share_type", SHARE_TYPES)
        # share_type=none uses no shared prefix, so its length is not read (may be anything).
        n_shared = 0 if self.share == "none" else positive(cfg, "num_shared_virtual_tokens")
        if self.share == "add" and n_shared != m:
            raise ConfigError("method.num_shared_virtual_tokens", f"share_type=add sums the shared and routed"
                              f" prefixes: needs it equal to method.num_virtual_tokens = {m}, got {n_shared}")
        self.mask_kind = mask_kind(cfg)
        mean, std = _number(cfg, "mask_init_mean"), _number(cfg, "mask_init_std", 0.0)
        options = router_options(cfg, self.n_routes, router_cfg)  # validated even when unused

        self.width = len(self.sites) * 2 * info["n_heads"] * info["d_head"]
        self.shared = nn.Parameter(torch.randn(n_shared, self.width)) if self.share != "none" else None
        self.pool = nn.Parameter(torch.randn(full, self.width)) if self.share != "only" else None
        self.n_tokens = {"only": n_shared, "add": m, "prepend": n_shared + m, "none": m}[self.share]
        self.mask = None
        if self.mask_kind:
            rows = self.n_routes if self.mask_kind == "subset" else 1
            self.mask = nn.Parameter(torch.randn(rows, self.n_tokens, len(self.sites)) * std + mean)
        routes_matter = self.pool is not None or self.mask_kind == "subset"
        self.router = None
        if self.n_routes > 1 and routes_matter:
            self.router = InputRouter(info["d_model"], self.n_routes, **options)

    def param_groups(self):
        def params(*ps):
            return [p for p in ps if p is not None]
        return {"prefix": params(self.pool), "shared_embedding": params(self.shared),
                "mask": params(self.mask), "router": list(self.router.parameters()) if self.router else []}

    def route(self, batch, backbone):
        """Router decision for the batch (the wrapper reserves the name `routing`)."""
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        return self.router(embeds, batch["attention_mask"])

    def table(self, route) -> torch.Tensor:
        """[B or 1, T, W] prefix rows before gating."""
        routed = None
        if self.pool is not None:
            pool = self.pool.view(self.n_routes, self.m, self.width)
            if route is None:  # R = 1: the one route, weight 1
                routed = pool[0][None]
            else:
                routed = (route.weights[..., None, None].to(pool.dtype) * pool[route.index]).sum(1)
        if self.share == "none":
            return routed
        shared = self.shared[None]
        if self.share == "only":
            return shared
        if self.share == "add":
            return shared + routed
        return torch.cat([shared.expand(routed.shape[0], -1, -1), routed], dim=1)

    def gate(self, route) -> torch.Tensor | None:
        """[B or 1, T, S] sigmoid gate per prefix token and site, or None without a mask."""
        if self.mask is None:
            return None
        if self.mask.shape[0] == 1 or route is None:  # one mask, or R = 1 where p_0 = 1
            return torch.sigmoid(self.mask[:1])
        return torch.sigmoid(torch.einsum("br,rts->bts", route.probs.to(self.mask.dtype), self.mask))

    def prepare(self, batch, backbone):
        kw, aux = super().prepare(batch, backbone)
        route = self.route(batch, backbone) if self.router is not None else None
        if route is not None:
            aux.update(route.aux())
        gate = self.gate(route)
        if gate is not None:  # mean gate per site, per example
            aux["mask/gate"] = gate.detach().mean(1).expand(batch["input_ids"].shape[0], -1)
        kw["mmpt_prefix"] = table_to_state(self.table(route), self.sites, self.info["n_heads"],
                                           self.info["d_head"], gate)
        return kw, aux

    def eval_stats(self, aux):
        stats = route_stats(aux, self.n_routes) if self.router is not None else {}
        gates = [a["mask/gate"] for a in aux if "mask/gate" in a]
        if gates:
            mean = torch.cat(gates).double().mean(0).tolist()
            stats.update({f"mask/gate_mean_{s}": g for s, g in zip(self.sites, mean)})
            stats["mask/gate_mean"] = sum(mean) / len(mean)  # over sites: the one-number summary
        return stats

    def figures(self) -> dict:
        """mask_gates: sigmoid(M), one panel per route (site x prefix token)."""
        if self.mask is None:
            return {}
        gates = torch.sigmoid(self.mask.detach().float()).cpu().numpy()
        return {"mask_gates": {"kind": "mask_gates", "file": "mask_gates.png", "gates": gates,
                               "sites": list(self.sites), "per_route": self.mask_kind == "subset"}}
