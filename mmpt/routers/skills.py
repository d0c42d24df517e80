"""Task-to-skill selectors (MTTL): for each example's task id, weights [batch, n_splits, n_skills]
over a bank of skills. Every selector's rows sum to 1 over skills.

- poly: a logit per (task, split, skill), U(-1e-3, 1e-3); training samples a relaxed Bernoulli
  (Gumbel-sigmoid), eval takes the sigmoid; weights are normalised w / sum(w).
- moe: the same table, softmax with Gaussian noise (std 1 / n_skills) in training, top-k (3),
  renormalised over the kept skills.
- private: one-hot on the task id (n_skills = n_tasks): independent per-task adapters.
- average: uniform 1 / n_skills (MuZ fine-tuning and zero-shot scoring).

Which layers share a selector is the granularity (`group_key`). The old rows of a table are a
buffer once a new task is appended (`add_task`), so no optimizer step, weight decay included,
can move them.
"""
import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpt.errors import ConfigError
from mmpt.routers.base import ROUTERS

GRANULARITIES = ("finegrained", "coarsegrained", "coderwise", "blockwise", "layerwise")
EPS = 1e-12


def group_key(layer: str, granularity: str) -> str:
    """Which selector an adapted layer uses, e.g. "encoder.block.1.layer.0.SelfAttention.q" ->
    finegrained: itself; coarsegrained: "all"; coderwise: "encoder"; blockwise: "encoder.block.1";
    layerwise: "encoder.block.1.layer.0" (one T5 sub-layer: self-attention, cross-attention or FFN).

    Blocks are found by their index, so every family's names work: a Llama-style
    "model.layers.1.self_attn.q_proj" is in block "model.layers.1" and sub-layer
    "model.layers.1.self_attn" (GPT-2: "transformer.h.1" and "transformer.h.1.attn" / ".mlp")."""
    if granularity == "finegrained":
        return layer
    if granularity == "coarsegrained":
        return "all"
    if granularity == "coderwise":
        return layer.split(".")[0]
    parts = layer.split(".")
    block = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    if block is None:
        raise ConfigError("router.granularity", f"{granularity} needs numbered blocks; {layer!r} has no block index")
    if granularity == "blockwise":
        return ".".join(parts[:block + 1])
    end = block + 2  # the sub-layer's name, and its index where it has one (T5's layer.0)
    if end < len(parts) and parts[end].isdigit():
        end += 1
    return ".".join(parts[:end])


def check_ids(task_ids, n_tasks: int) -> None:
    if task_ids.numel() and not 0 <= int(task_ids.min()) <= int(task_ids.max()) < n_tasks:
        raise ValueError(f"task ids {task_ids.unique().tolist()} outside the selector's {n_tasks} tasks")


class Selector(nn.Module, abc.ABC):
    """Base: `forward(task_ids) -> [B, n_splits, n_skills]`, rows summing to 1.

    `probs(task_ids, sample)` are the activations in [0, 1] before normalisation; `sample` (the
    training-time noise) is explicit so diagnostics can read eval activations in any mode."""

    def __init__(self, n_tasks: int, n_splits: int, n_skills: int):
        super().__init__()
        self.n_tasks, self.n_splits, self.n_skills = n_tasks, n_splits, n_skills

    @abc.abstractmethod
    def probs(self, task_ids, sample: bool):
        """[B, n_splits, n_skills] activations in [0, 1] for the given task ids."""

    def forward(self, task_ids):
        p = self.probs(task_ids, sample=self.training)
        return p / (p.sum(-1, keepdim=True) + EPS)

    def trained_ids(self, device=None):
        """The task ids whose routing this run trains (all of them, unless rows were frozen)."""
        return torch.arange(self.n_tasks, device=device)


@dataclass
class AverageConfig:
    """Option names and types; defaults and comments: conf/router/average.yaml."""
    name: str
    granularity: str


@ROUTERS.register("average", config=AverageConfig, kind="skills")
class Average(Selector):
    def probs(self, task_ids, sample):  # every skill fully on; normalised: 1 / n_skills
        return torch.ones(len(task_ids), self.n_splits, self.n_skills, device=task_ids.device)


@dataclass
class PrivateConfig:
    """Option names and types; defaults and comments: conf/router/private.yaml."""
    name: str
    granularity: str


@ROUTERS.register("private", config=PrivateConfig, kind="skills")
class Private(Selector):
    def __init__(self, n_tasks, n_splits, n_skills):
        super().__init__(n_tasks, n_splits, n_skills)
        if n_skills != n_tasks:
            raise ConfigError("method.n_skills", f"router private needs n_skills = number of tasks "
                              f"({n_tasks}), got {n_skills}")

    def probs(self, task_ids, sample):
        check_ids(task_ids, self.n_tasks)
        return F.one_hot(task_ids, self.n_skills).float()[:, None].expand(-1, self.n_splits, -1)


class Table(Selector):
    """A learned table of logits [n_tasks, n_splits * n_skills]; rows added later are appended."""

    def __init__(self, n_tasks, n_splits, n_skills):
        super().__init__(n_tasks, n_splits, n_skills)
        self.register_buffer("frozen", torch.zeros(0, n_splits * n_skills))  # rows of earlier tasks
        self.logits = nn.Parameter(torch.empty(n_tasks, n_splits * n_skills).uniform_(-1e-3, 1e-3))

    def add_task(self) -> int:
        """Append a fresh row for a new task; the existing rows become a frozen buffer. Returns its id."""
        self.frozen = torch.cat([self.frozen, self.logits.detach()])
        self.logits = nn.Parameter(torch.empty(1, self.logits.shape[1]).uniform_(-1e-3, 1e-3).to(self.frozen))
        self.n_tasks += 1
        return self.n_tasks - 1

    def table(self, task_ids):
        check_ids(task_ids, self.n_tasks)
        rows = torch.cat([self.frozen, self.logits])[task_ids]
        return rows.view(-1, self.n_splits, self.n_skills)

    def trained_ids(self, device=None):  # the frozen rows of earlier tasks come first
        return torch.arange(len(self.frozen), self.n_tasks, device=device)


@dataclass
class PolyConfig:
    """Option names and types; defaults and comments: conf/router/poly.yaml."""
    name: str
    granularity: str
    temperature: float
    straight_through: bool
    dropout: float
    shared_skill: bool


@ROUTERS.register("poly", config=PolyConfig, kind="skills")
class Poly(Table):
    def __init__(self, n_tasks, n_splits, n_skills, temperature=1.0, straight_through=False,
                 dropout=0.0, shared_skill=False):
        super().__init__(n_tasks, n_splits, n_skills)
        if shared_skill and n_skills < 2:
            raise ConfigError("router.shared_skill", "needs n_skills >= 2 (one shared, the rest routed)")
        if not 0 <= dropout < 1:
            raise ConfigError("router.dropout", f"expected a probability in [0, 1), got {dropout!r}")
        self.temperature, self.straight_through = temperature, straight_through
        self.dropout, self.shared_skill = dropout, shared_skill

    def probs(self, task_ids, sample):
        logits = self.table(task_ids)
        if sample:
            u = torch.rand_like(logits).clamp(EPS, 1 - EPS)
            # relaxed Bernoulli: sigmoid((logit + logistic noise) / T)
            probs = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        else:
            probs = torch.sigmoid(logits)
        if self.straight_through:
            # hard 0/1 forward, the soft value's gradient backward; eval rounds too, so the weights
            # it uses are the kind training saw
            probs = (probs > 0.5).float() + probs - probs.detach()
        if sample and self.dropout:
            # drop sampled weights: a dropped skill is off for that example (training only); no
            # 1 / (1 - p) rescaling, the normalisation below would cancel it
            probs = probs * (torch.rand_like(probs) >= self.dropout)
        if self.shared_skill:  # the last skill of every split is always on, for every task
            probs = torch.cat([probs[..., :-1], torch.ones_like(probs[..., -1:])], -1)
        return probs


@dataclass
class MoEConfig:
    """Option names and types; defaults and comments: conf/router/moe.yaml."""
    name: str
    granularity: str
    top_k: int
    noise_std: float | None


@ROUTERS.register("moe", config=MoEConfig, kind="skills")
class MoE(Table):
    def __init__(self, n_tasks, n_splits, n_skills, top_k=3, noise_std=None):
        super().__init__(n_tasks, n_splits, n_skills)
        if not isinstance(top_k, int) or not 1 <= top_k <= n_skills:
            raise ConfigError("router.top_k", f"expected an integer in [1, n_skills={n_skills}], got {top_k!r}")
        if noise_std is not None and not noise_std >= 0:
            raise ConfigError("router.noise_std", f"expected null or a number >= 0, got {noise_std!r}")
        # the reference's noise: N(0, 1) / n_skills
        self.top_k, self.noise_std = top_k, 1 / n_skills if noise_std is None else noise_std

    def probs(self, task_ids, sample):
        logits = self.table(task_ids)
        if sample and self.noise_std:
            logits = logits + self.noise_std * torch.randn_like(logits)
        probs = logits.softmax(-1)
        kept = torch.zeros_like(probs).scatter(-1, probs.topk(self.top_k, -1).indices, 1.0)
        return probs * kept  # forward() renormalises over the skills (the reference: over splits)


def selector_names() -> list[str]:
    return [e.name for e in ROUTERS.entries() if e.extra.get("kind") == "skills"]


def build_selector(cfg, n_tasks: int, n_splits: int, n_skills: int) -> Selector:
    """One selector from the `router` config group (its name and that selector's options)."""
    name = cfg.get("name")
    if name not in selector_names():
        raise ConfigError("router.name", f"skill methods need one of {sorted(selector_names())}, got {name!r}")
    entry = ROUTERS.get(name)
    kwargs = {k: cfg[k] for k in entry.option_names()
              if k not in ("name", "granularity") and cfg.get(k) is not None}
    return entry.obj(n_tasks, n_splits, n_skills, **kwargs)


@torch.no_grad()
def routing_stats(probs: torch.Tensor) -> dict:
    """Diagnostics of eval activations [n_tasks, n_splits, n_skills] (before normalisation).

    sparsity: share of normalised weights under a tenth of the uniform share 1 / n_skills (skills
    switched off); discreteness: mean |2 p - 1| (1 = every skill fully on or off, 0 = all half on);
    effective_skills: exp(entropy) of the normalised weights per row, 1 (one skill) .. n_skills."""
    weights = probs / (probs.sum(-1, keepdim=True) + EPS)
    entropy = -(weights * (weights + EPS).log()).sum(-1)
    return {"routing/sparsity": (weights < 0.1 / probs.shape[-1]).float().mean().item(),
            "routing/discreteness": (2 * probs - 1).abs().mean().item(),
            "routing/effective_skills": entropy.exp().mean().item()}
