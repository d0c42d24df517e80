"""Modular skills (MTTL): Polytropon (Ponti et al. 2023) and MHR (Caccia et al. 2023).

Every adapted Linear holds a bank of n_skills adapters (LoRA or IA3, mmpt/methods/adapters.py);
a selector from mmpt/routers/skills.py turns each example's task id into mixing weights
[batch, n_splits, n_skills]. `routing(batch, repeat)` asks each layer's selector for the weights of
one backbone call (a selector shared by several layers draws a sample for each of them, as the
reference's layers each call theirs); nothing outlives that call.
"""
import abc
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mmpt.errors import ConfigError
from mmpt.export.mapping import PeftMapping, Slot, not_expressible
from mmpt.methods.adapters import PolyIA3Linear, PolyLoRALinear, transposed, wrap_linears
from mmpt.methods.base import Method, positive
from mmpt.routers.skills import GRANULARITIES, Average, Poly, Table, build_selector, group_key, routing_stats


class PolySkills(Method):
    uses_router = True

    def __init__(self, cfg, backbone, info, router_cfg):
        super().__init__(cfg, backbone, info)
        self.n_skills, self.n_splits = positive(cfg, "n_skills"), positive(cfg, "n_splits")
        granularity = router_cfg.get("granularity")
        if granularity not in GRANULARITIES:
            raise ConfigError("router.granularity", f"expected one of {list(GRANULARITIES)}, got {granularity!r}")
        self.configure(cfg)
        # Plain dict, not submodules: the layers live inside the backbone (one name per weight).
        self._layers = wrap_linears(backbone, cfg.target_modules, self.make_layer)
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

    # -- fine-tuning hooks (mmpt/finetune.py) --
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

    def save_figures(self, run_dir) -> dict:
        from mmpt.report.heatmap import routing_heatmap, task_names  # matplotlib only when drawing

        probs = self.allocation()
        weights = (probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)).mean((0, 2))  # [tasks, skills]
        path = routing_heatmap(weights.numpy(), task_names(run_dir, self.n_tasks),
                               Path(run_dir) / "routing_heatmap.png")
        return {"routing/heatmap": str(path)}


class PolyLoRA(PolySkills):
    peft_why_not = "PEFT's poly tuner takes the poly selector only"

    def configure(self, cfg):
        self.rank = positive(cfg, "rank")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError("method.dropout", f"expected a value in [0, 1), got {cfg.dropout}")

    def make_layer(self, linear):
        return PolyLoRALinear(linear, self.n_skills, self.n_splits, self.rank, self.cfg.alpha, self.cfg.dropout)

    def adapter_params(self):
        return [p for m in self._layers.values() for p in (m.lora_A, m.lora_B)]

    def peft_mapping(self):
        # PEFT's poly tuner: the same A/B bank layout and eval routing (sigmoid, normalised), a
        # router per adapted module (a selector shared by several modules is written to each),
        # and a fixed scale 1 / r: B is stored times alpha so that B_peft / r = (alpha / r) B.
        odd = [type(s).__name__.lower() for s in self.selectors.values() if type(s) is not Poly]
        odd += ["shared_skill"] * any(getattr(s, "shared_skill", False) for s in self.selectors.values())
        odd += ["fine-tuned routing rows"] * any(len(getattr(s, "frozen", ())) for s in self.selectors.values())
        if odd:
            raise not_expressible(self.cfg.name, f"{self.peft_why_not} (this run: {odd[0]})")
        if transposed(self._layers.values()):
            raise not_expressible(self.cfg.name, "PEFT's poly tuner adapts torch.nn.Linear layers only, and this "
                                  "run adapts Conv1D layers (GPT-2)")
        config = {"peft_type": "POLY", "poly_type": "poly", "r": self.rank, "n_tasks": self.n_tasks,
                  "n_skills": self.n_skills, "n_splits": self.n_splits, "target_modules": sorted(self._layers)}
        tensors = {}
        for name, m in self._layers.items():
            tensors[f"{name}.poly_lora_A"] = Slot(m.lora_A)
            tensors[f"{name}.poly_lora_B"] = Slot(m.lora_B, scale=self.cfg.alpha)
            tensors[f"{name}.poly_router.module_logits"] = Slot(self.selectors[self._key[name]].logits)
        return PeftMapping(config, tensors)


class PolyIA3(PolySkills):
    peft_why_not = "PEFT's poly tuner mixes LoRA skills only"

    def make_layer(self, linear):
        return PolyIA3Linear(linear, self.n_skills, self.n_splits)

    def adapter_params(self):
        return [m.ia3_l for m in self._layers.values()]
