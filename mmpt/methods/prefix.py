"""Deep prefix tuning (Li & Liang 2021): per-layer key/value prefixes in self-attention.

The prefix is one table [P, sites * 2 * H * d_head], N(0, init_std) initialised, with no
reparameterisation MLP (as in the MMPT reference). Layer l's rows go to layer l of every stack the
placement names. `per_task: true` keeps one table per task id ([n_tasks, P, width]); each example
of a mixed-task batch gets its own task's (mmpt/methods/per_task.py).
"""
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.methods.base import METHODS, PLACEMENTS, Method, choose, positive
from mmpt.methods.per_task import new_task_id, per_task_rows, select_rows
from mmpt.methods.prefix_attention import table_to_state


@dataclass
class PrefixConfig:
    """Option names and types; defaults and comments: conf/method/prefix.yaml."""
    name: str
    num_virtual_tokens: int
    placement: str
    init_std: float
    per_task: bool


@METHODS.register("prefix", config=PrefixConfig)
class Prefix(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.sites = self.placement_sites(choose(cfg, "placement", PLACEMENTS))
        n = positive(cfg, "num_virtual_tokens")
        width = len(self.sites) * 2 * info["n_heads"] * info["d_head"]
        self.per_task = per_task_rows(cfg, info)  # None: one prefix shared by every task
        shape = (self.per_task, n, width) if self.per_task else (n, width)
        self.prefix = nn.Parameter(torch.randn(shape) * cfg.get("init_std", 1.0))

    def prefix_state(self, table, gate=None):
        return table_to_state(table, self.sites, self.info["n_heads"], self.info["d_head"], gate)

    def prepare(self, batch, backbone):
        kw, aux = super().prepare(batch, backbone)
        table = select_rows(self.prefix, batch) if self.per_task else self.prefix[None]
        kw["mmpt_prefix"] = self.prefix_state(table)
        return kw, aux

    def param_groups(self):
        return {"prefix": [self.prefix]}

    def add_task(self) -> int:
        return new_task_id(self)
