"""The input-conditioned top-k router of SMoP, shared by prefix_routing and prompt_routing.

Each example is routed on the mean of its frozen input token embeddings (padding excluded):
    z = W s,  W: Linear(d -> R, no bias), orthogonal init
    training, perturb:     z = z + eps * z, eps ~ N(0, 1), the added eps * z detached (SMoP's
                           relative noise): forward z (1 + eps), backward as if no noise
    training, no perturb:  z = dropout(z)
    p = softmax(z); weights, index = topk(p, k)
With `gumbel`, training instead picks one route from softmax(z + Gumbel noise) with weight 1 in the
forward pass and the soft sample's gradient (straight-through); eval picks argmax p with weight 1,
so train and eval mix routes the same way. Eval is deterministic: no noise, no dropout.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpt.errors import ConfigError
from mmpt.routers.base import ROUTERS

NAME = "input_topk"  # `router.name` of this router (conf/router/input_topk.yaml)


@dataclass
class InputTopkConfig:
    """Option names and types; defaults and comments: conf/router/input_topk.yaml."""
    name: str
    topk: int
    perturb: bool
    dropout: float
    gumbel: bool
    gumbel_tau: float


@dataclass
class Routing:
    probs: torch.Tensor    # [B, R] softmax over all routes (what a subset mask mixes)
    weights: torch.Tensor  # [B, k] weight of each chosen route
    index: torch.Tensor    # [B, k] chosen routes, most probable first

    def aux(self) -> dict:
        """Detached copies for eval diagnostics (see route_stats)."""
        return {"router/probs": self.probs.detach(), "router/index": self.index.detach()}


def flag(cfg, key: str) -> bool:
    """cfg[key] as a bool; anything else is refused, naming method.<key>."""
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"method.{key}", f"expected true or false, got {value!r}")
    return value


def router_options(cfg, n_routes: int, router_cfg) -> dict:
    """Validate the router's settings and return InputRouter keyword arguments.

    The method's keys (method.topk, perturb_router, router_dropout, gumbel) are what the code
    reads; their YAML defaults interpolate the router group's (conf/router/input_topk.yaml).
    Router-only options (gumbel_tau) are read from the router group itself.
    """
    name = (router_cfg or {}).get("name")
    if name != NAME:
        raise ConfigError("router", f"method {cfg.get('name')} routes with router={NAME}, got {name!r}")
    topk = cfg.get("topk")
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= n_routes:
        raise ConfigError("method.topk", f"expected an integer in [1, R={n_routes}] "
                          f"(R = num_virtual_tokens_full / num_virtual_tokens), got {topk!r}")
    perturb, gumbel = flag(cfg, "perturb_router"), flag(cfg, "gumbel")
    dropout = cfg.get("router_dropout")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError("method.router_dropout", f"expected a probability in [0, 1), got {dropout!r}")
    if gumbel and topk != 1:
        raise ConfigError("method.gumbel", f"hard Gumbel routing picks one route: needs method.topk=1, "
                          f"got {topk}")
    tau = router_cfg.get("gumbel_tau", 1.0)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
        raise ConfigError("router.gumbel_tau", f"expected a temperature > 0, got {tau!r}")
    return dict(topk=topk, perturb=perturb, dropout=float(dropout), gumbel=gumbel, gumbel_tau=float(tau))


@ROUTERS.register(NAME, config=InputTopkConfig, kind="input")
class InputRouter(nn.Module):
    def __init__(self, d_model: int, n_routes: int, topk: int = 1, perturb: bool = True,
                 dropout: float = 0.2, gumbel: bool = False, gumbel_tau: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(d_model, n_routes, bias=False)
        nn.init.orthogonal_(self.linear.weight)
        self.topk, self.perturb, self.dropout = topk, perturb, dropout
        self.gumbel, self.tau = gumbel, gumbel_tau

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> Routing:
        """embeds [B, S, d]: the frozen input token embeddings; attention_mask [B, S]."""
        keep = attention_mask[..., None].to(embeds.dtype)
        pooled = (embeds.detach() * keep).sum(1) / keep.sum(1).clamp(min=1)
        z = self.linear(pooled.to(self.linear.weight.dtype))
        if self.training and self.perturb:
            z = z + (torch.randn_like(z) * z).detach()  # noise scaled by |z|, but not differentiated
        elif not self.perturb:
            z = F.dropout(z, self.dropout, self.training)
        probs = z.softmax(-1)
        if self.gumbel:
            return Routing(probs, *self._hard_top1(z, probs))
        weights, index = probs.topk(self.topk, dim=-1)
        return Routing(probs, weights, index)

    def _hard_top1(self, z, probs):
        if not self.training:
            index = probs.argmax(-1, keepdim=True)
            return torch.ones_like(index, dtype=probs.dtype), index
        u = torch.rand_like(z).clamp(1e-9, 1 - 1e-9)
        soft = ((z - torch.log(-torch.log(u))) / self.tau).softmax(-1)
        index = soft.argmax(-1, keepdim=True)
        picked = soft.gather(-1, index)
        return (picked - picked.detach()) + 1, index  # exactly 1 forward, d(soft)/dz backward


def route_counts(index: torch.Tensor, n_routes: int) -> torch.Tensor:
    """[R] number of examples whose top-1 route is r (index [B, k], best first)."""
    return torch.bincount(index[:, 0].cpu(), minlength=n_routes)


def route_stats(aux: list[dict], n_routes: int) -> dict:
    """Route loads (share of examples per top-1 route; they sum to 1), their max (1 = collapse),
    and the mean entropy of p over one evaluation."""
    aux = [a for a in aux if "router/index" in a]
    if not aux:
        return {}
    counts = route_counts(torch.cat([a["router/index"] for a in aux]), n_routes)
    load = counts.double() / counts.sum()
    probs = torch.cat([a["router/probs"] for a in aux]).double().cpu()
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1).mean()
    stats = {f"router/load_{r}": load[r].item() for r in range(n_routes)}
    stats.update({"router/max_load": load.max().item(), "router/entropy": entropy.item()})
    return stats
