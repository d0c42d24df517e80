"""Modular skills (MTTL): Polytropon (Ponti et al. 2023) and MHR (Caccia et al. 2023).

Every adapted Linear holds a bank of n_skills adapters (LoRA or IA3, mmpt/methods/adapters.py);
a selector from mmpt/routers/skills.py turns each example's task id into mixing weights
[batch, n_splits, n_skills]. `routing(batch, repeat)` asks each layer's selector for the weights of
one backbone call (a selector shared by several layers draws a sample for each of them, as the
reference's layers each call theirs); nothing outlives that call.
"""
import abc
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.errors import ConfigError
from mmpt.methods.adapters import PolyIA3Linear, PolyLoRALinear, target_pattern, wrap_linears
from mmpt.methods.base import METHODS, Method, positive
from mmpt.routers.skills import GRANULARITIES, Average, Table, build_selector, group_key, routing_stats


@dataclass
class PolyLoRAConfig:
    """Option names and types; defaults and comments: conf/method/poly_lora.yaml."""
    name: str
    n_skills: int
    n_splits: int
    rank: int
    alpha: float
    dropout: float
    target_modules: str


@dataclass
class PolyIA3Config:
    """Option names and types; defaults and comments: conf/method/poly_ia3.yaml."""
    name: str
    n_skills: int
    n_splits: int
    target_modules: str


class PolySkills(Method):
    uses_router = True
    skill_routing = True

    def __init__(self, cfg, backbone, info, router_cfg):
        super().__init__(cfg, backbone, info)
        self.n_skills, self.n_splits = positive(cfg, "n_skills"), positive(cfg, "n_splits")
        granularity = router_cfg.get("granularity")
        if granularity not in GRANULARITIES:
            raise ConfigError("router.granularity", f"expected one of {list(GRANULARITIES)}, got {granularity!r}")
        self.configure(cfg)
        # Plain dict, not submodules: the layers live inside the backbone (one name per weight).
        self._layers = wrap_linears(backbone, target_pattern(cfg, info), self.make_layer)
        # ModuleDict keys cannot hold dots
        self._key = {name: group_key(name, granularity).replace(".", "_") for name in self._layers}
        n_tasks = info.get("n_tasks", 1)
        self.selectors = nn.ModuleDict({key: build_selector(router_cfg, n_tasks, self.n_splits, self.n_skills)
                                        for key in dict.fromkeys(self._key.values())})

    def configure(self, cfg) -> None:
        """Read and check the adapter's own keys (before any layer is made)."""

    @abc.abstractmethod
    def make_layer(self, linear: nn.Linear) -> nn.Module:
        """The skill-bank wrapper of one adapted Linear."""

    @abc.abstractmethod
    def adapter_params(self) -> list:
        """Every skill-bank weight (the `adapters` group)."""

    def param_groups(self):
        # `routing` may be empty (private / average selectors have nothing to learn)
        return {"adapters": self.adapter_params(), "routing": list(self.selectors.parameters())}

    @property
    def n_tasks(self) -> int:
        return next(iter(self.selectors.values())).n_tasks

    @contextmanager
    def routing(self, batch, repeat: int = 1):
        """Mixing weights for one backbone call; repeat: rows per example (rank scoring's C choices)."""
        device = next(iter(self._layers.values())).base.weight.device
        ids = batch["task_id"].to(device)
        for name, layer in self._layers.items():
            layer.weights = self.selectors[self._key[name]](ids).repeat_interleave(repeat, 0)
        try:
            yield
        finally:
            if not self.recomputed:  # gradient checkpointing reads them again in backward
                for layer in self._layers.values():
                    layer.weights = None

    # -- fine-tuning hooks (mmpt/recipes/transfer.py) --
    def _averages(self) -> nn.ModuleDict:
        return nn.ModuleDict({k: Average(self.n_tasks, self.n_splits, self.n_skills) for k in self.selectors})

    def use_average(self) -> None:
        """Replace every selector by the uniform one for good (MuZ): no routing parameters remain."""
        self.selectors = self._averages().to(next(iter(self._layers.values())).base.weight.device)

    @contextmanager
    def averaged(self):
        """Uniform routing for the duration (zero-shot scoring of the loaded skills)."""
        saved, self.selectors = self.selectors, self._averages()
        try:
            yield
        finally:
            self.selectors = saved

    @property
    def layers(self) -> dict:
        """{module path in the backbone: skill-bank layer}."""
        return self._layers

    def selector_of(self, name: str):
        """The selector that routes the adapted module `name`."""
        return self.selectors[self._key[name]]

    def add_task(self) -> int:
        """Append a fresh routing row for a new task to every selector; return the new task id."""
        bad = sorted({type(s).__name__.lower() for s in self.selectors.values() if not isinstance(s, Table)})
        if bad:
            raise ConfigError("finetune_type", f"a new task needs a learned routing table (router poly "
                              f"or moe); this model's router is {bad[0]}")
        return [sel.add_task() for sel in self.selectors.values()][0]

    # -- diagnostics --
    @torch.no_grad()
    def allocation(self, trained_only: bool = False) -> torch.Tensor:
        """Eval activations per selector: [n_selectors, tasks, n_splits, n_skills], of every task or
        of the tasks whose rows this run trains (fine-tuning: the new task's, not the frozen ones)."""
        device = next(iter(self._layers.values())).base.weight.device
        first = next(iter(self.selectors.values()))
        ids = first.trained_ids(device) if trained_only else torch.arange(self.n_tasks, device=device)
        return torch.stack([sel.probs(ids, sample=False) for sel in self.selectors.values()]).float().cpu()

    def eval_stats(self, aux):
        return routing_stats(self.allocation(trained_only=True))

    def figures(self) -> dict:
        """routing_heatmap: the task x skill allocation (mean over selectors and splits); its rows
        are the task ids, which the recipe names."""
        probs = self.allocation()
        weights = (probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)).mean((0, 2))  # [tasks, skills]
        return {"routing/heatmap": {"kind": "heatmap", "file": "routing_heatmap.png", "values": weights.numpy(),
                                    "rows": "task_ids"}}


@METHODS.register("poly_lora", config=PolyLoRAConfig)
class PolyLoRA(PolySkills):
    def configure(self, cfg):
        self.rank = positive(cfg, "rank")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError("method.dropout", f"expected a value in [0, 1), got {cfg.dropout}")

    def make_layer(self, linear):
        return PolyLoRALinear(linear, self.n_skills, self.n_splits, self.rank, self.cfg.alpha, self.cfg.dropout)

    def adapter_params(self):
        return [p for m in self._layers.values() for p in (m.lora_A, m.lora_B)]


@METHODS.register("poly_ia3", config=PolyIA3Config)
class PolyIA3(PolySkills):
    def make_layer(self, linear):
        return PolyIA3Linear(linear, self.n_skills, self.n_splits)

    def adapter_params(self):
        return [m.ia3_l for m in self._layers.values()]
