"""Methods over a library of LoRA experts: Arrow routing, merged updates, learned weights.

Each wraps the library's target Linears of a fresh backbone. The experts' A [E, r, d_in] and
B [E, d_out, r] (B already times alpha / r: expert e adds B_e A_e x) are frozen buffers; what is
derived from them (Arrow prototypes, merged updates) is computed once per library and cached in
its directory (Library.cached).
"""
import math

import torch
from torch import nn

from mmpt import distributed
from mmpt.engine import progress
from mmpt.errors import CheckpointError
from mmpt.methods.adapters import ADAPTABLE, Wrapped, dims, float_dtype
from mmpt.methods.base import Method


# -- what is computed once per library --
@torch.no_grad()
def prototype(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The top right singular vector of B @ A ([d_in]), without forming B @ A: with B = Q R (Q
    orthonormal columns), B A = Q (R A) has the right singular vectors of the small R A. The sign
    is fixed (largest entry positive); Arrow uses |<x, v>|, so it does not matter."""
    _, R = torch.linalg.qr(B.double())
    v = torch.linalg.svd(R @ A.double(), full_matrices=False).Vh[0]
    return (v * v[v.abs().argmax()].sign()).float()


def prototypes(stack: dict) -> dict:
    """{module: [E, d_in]}: every expert's prototype at every layer (Arrow): a QR and an SVD per
    expert and layer, thousands for a large library, so it shows progress (once: then cached)."""
    out = {}
    total = sum(len(A) for A, _ in stack.values())
    with progress.bar(total, "arrow prototypes", enabled=distributed.is_main(), leave=False) as bar:
        for m, (A, B) in stack.items():
            out[m] = torch.stack([prototype(a, b) for a, b in zip(A, B)])
            bar.update(len(A))
    return out


def uniform_merge(stack: dict) -> dict:
    """{module: [d_out, d_in]}: the mean of the experts' updates B_e A_e."""
    return {m: torch.einsum("eor,eri->oi", B.double(), A.double()).div(len(A)).float() for m, (A, B) in stack.items()}


# -- layers --
class DeltaLinear(Wrapped):
    """y = W x + delta x: a merged (frozen) update of the weight."""

    def __init__(self, base, delta):
        super().__init__()
        self.base = base
        self.register_buffer("delta", delta.to(base.weight.device, float_dtype(base)), persistent=False)

    def forward(self, x):
        return self.base(x) + x @ self.delta.to(x.dtype).T


class ExpertsLinear(Wrapped):
    """y = W x + sum_e w_e B_e A_e x over the library's (frozen) experts; the weights w come from
    `mix(x)`: [..., E] per token (Arrow) or [E] for every token (weighted)."""

    def __init__(self, base, A, B):
        super().__init__()
        self.base = base
        self.register_buffer("A", A.to(base.weight.device, float_dtype(base)), persistent=False)  # [E, r, d_in]
        self.register_buffer("B", B.to(base.weight.device, float_dtype(base)), persistent=False)  # [E, d_out, r]

    def mix(self, x):
        raise NotImplementedError

    def forward(self, x):
        w = self.mix(x).to(x.dtype)
        z = torch.einsum("...i,eri->...er", x, self.A.to(x.dtype)) * w[..., None]
        return self.base(x) + torch.einsum("...er,eor->...o", z, self.B.to(x.dtype))


class RoutedLinear(ExpertsLinear):
    """Per-token routing: each token's weights are a softmax over its top-k `logits(x)`, the other
    experts 0. Eval calls count each expert's picks and weight."""

    def __init__(self, base, A, B, keys, top_k: int):
        super().__init__(base, A, B)
        self.register_buffer("keys", keys.to(base.weight.device, float_dtype(base)), persistent=False)  # [E, d_in]
        self.top_k = top_k
        self.reset_counts()

    def reset_counts(self):
        E = len(self.keys)
        self.picks, self.weight_sum, self.tokens = torch.zeros(E), torch.zeros(E), 0

    def logits(self, x):
        # abstract: each routed type says how a token scores the experts (ArrowLinear: |<x, prototype>|;
        # PhatgooseLinear: LN(x) . LN(gate) / sqrt(d)); RoutedLinear itself is never built
        raise NotImplementedError

    def mix(self, x):
        logits = self.logits(x)  # [..., E]
        top = logits.topk(self.top_k, dim=-1)
        w = torch.full_like(logits, -math.inf).scatter(-1, top.indices, top.values).softmax(-1)
        if not self.training:  # diagnostics of evaluations (padding positions included)
            flat = w.detach().reshape(-1, w.shape[-1]).float().cpu()
            self.picks += (flat > 0).sum(0)
            self.weight_sum += flat.sum(0)
            self.tokens += len(flat)
        return w


class ArrowLinear(RoutedLinear):
    """Arrow (Ostapenko et al. 2024): logits |<x, prototype_e>| / T (the keys are the prototypes)."""

    def __init__(self, base, A, B, protos, top_k: int, temperature: float):
        super().__init__(base, A, B, protos, top_k)
        self.temperature = temperature

    @property
    def protos(self):
        return self.keys

    def logits(self, x):
        return (x @ self.keys.to(x.dtype).T).abs() / self.temperature


class WeightedLinear(ExpertsLinear):
    """The method's learned weight per expert, set by its `routing` context for one backbone call."""
    weights = None

    def mix(self, x):
        if self.weights is None:
            raise RuntimeError("WeightedLinear called outside the method's routing context")
        return self.weights


# -- methods --
class LibraryMethod(Method):
    """Wraps every target module of the library with `make_layer(name, linear)`."""

    def __init__(self, cfg, backbone, info, library):
        super().__init__(cfg, backbone, info)
        self.library, self.expert_names = library.path, list(library.names)
        modules = dict(backbone.named_modules())
        self._layers = {}
        for name in library.compat["targets"]:
            linear = modules.get(name)
            if not isinstance(linear, ADAPTABLE):
                raise CheckpointError(f"library {library.path}: target `{name}` is not a Linear of this backbone")
            self._layers[name] = layer = self.make_layer(name, linear)
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, layer)

    def make_layer(self, name, linear):
        raise NotImplementedError

    def param_groups(self):
        return {}


class Merged(LibraryMethod):
    """uniform and the PEFT merges (types/merges.py): one merged update per target module (`deltas`, from the cache)."""

    def __init__(self, cfg, backbone, info, library, deltas):
        self._deltas = deltas
        super().__init__(cfg, backbone, info, library)

    def make_layer(self, name, linear):
        d_in, d_out = dims(linear)
        delta = self._deltas[name]
        if tuple(delta.shape) != (d_out, d_in):
            raise CheckpointError(f"library {self.library}: `{name}` update {list(delta.shape)} does not fit "
                                  f"this backbone's [{d_out}, {d_in}]")
        return DeltaLinear(linear, delta)


class Arrow(LibraryMethod):
    """Per-token routing over the library's experts (Arrow; phatgoose.py's Phatgoose by its layer)."""
    title = "Arrow"

    def __init__(self, cfg, backbone, info, library, stack, protos, names=None):
        self._stack, self._protos = stack, protos
        super().__init__(cfg, backbone, info, library)
        self.expert_names = list(names or library.names)  # GenKnowSub routes the task experts only
        self.last_choice = None  # [layers, experts] mean routing weights of the last evaluation
        self.history = []        # per evaluation: {"weight": [layers, experts], "picked": [layers, experts]}

    def make_layer(self, name, linear):
        A, B = self._stack[name]
        return ArrowLinear(linear, A, B, self._protos[name], self.cfg.top_k, self.cfg.temperature)

    def eval_stats(self, aux):
        """Per expert: `experts/<name>` its mean routing weight over tokens and layers, and
        `experts/picked/<name>` how often it is among a token's top-k; counts restart each eval."""
        layers = list(self._layers.values())
        if not layers[0].tokens:
            return {}
        picks = torch.stack([m.picks / m.tokens for m in layers])      # [L, E]
        weight = torch.stack([m.weight_sum / m.tokens for m in layers])
        for m in layers:
            m.reset_counts()
        self.last_choice = weight
        self.history.append({"weight": weight.tolist(), "picked": picks.tolist()})
        stats = {f"experts/{n}": w.item() for n, w in zip(self.expert_names, weight.mean(0))}
        stats.update({f"experts/picked/{n}": p.item() for n, p in zip(self.expert_names, picks.mean(0))})
        return stats

    def figures(self) -> dict:
        """expert_choice: the last evaluation's layer x expert routing weights (and every
        evaluation's, as JSON beside the image)."""
        if self.last_choice is None:
            return {}
        return {"experts/heatmap": {
            "kind": "heatmap", "file": "expert_choice.png", "values": self.last_choice.numpy(), "rows": list(self._layers),
            "labels": {"columns": self.expert_names, "xlabel": "expert", "ylabel": "layer",
                       "title": f"{self.title} (top-{self.cfg.top_k}):\nmean routing weight", "label": "weight"},
            "json": {"file": "expert_choice.json",
                     "data": {"layers": list(self._layers), "experts": self.expert_names, "evals": self.history}}}}


class Weighted(LibraryMethod):
    """LoraHub-style: one learned weight per expert, shared by every layer, starting at 1 / E (the
    uniform merge); trained by gradient (group `routing`)."""

    def __init__(self, cfg, backbone, info, library, stack):
        self._stack = stack
        super().__init__(cfg, backbone, info, library)
        self.expert_weights = nn.Parameter(torch.full((len(self.expert_names),), 1 / len(self.expert_names)))

    def make_layer(self, name, linear):
        return WeightedLinear(linear, *self._stack[name])

    def param_groups(self):
        return {"routing": [self.expert_weights]}

    def routing(self, batch, repeat: int = 1):
        return _Weights(self)

    def eval_stats(self, aux):
        return {f"experts/{n}": w.item() for n, w in zip(self.expert_names, self.expert_weights.detach())}


class _Weights:
    """The routing context of Weighted: every layer reads the current weights during one call."""

    def __init__(self, method):
        self.method = method

    def __enter__(self):
        w = self.method.expert_weights.view(-1)  # a view, not a Parameter: layers do not register it
        for layer in self.method._layers.values():
            layer.weights = w

    def __exit__(self, *exc):
        if not self.method.recomputed:  # gradient checkpointing reads them again in backward
            for layer in self.method._layers.values():
                layer.weights = None
