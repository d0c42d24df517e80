"""Deep prefix tuning (Li & Liang 2021): per-layer key/value prefixes in self-attention.

The prefix is one table [P, sites * 2 * H * d_head], N(0, init_std) initialised, with no
reparameterisation MLP (as in the MMPT reference). Layer l's rows go to layer l of every stack the
placement names. `per_task: true` keeps one table per task id ([n_tasks, P, width]); each example
of a mixed-task batch gets its own task's (mmpt/methods/per_task.py).
"""
import torch
from torch import nn

from mmpt.export.mapping import PeftMapping, Slot, not_expressible
from mmpt.methods.base import PLACEMENTS, Method, choose, positive
from mmpt.methods.per_task import PER_TASK_WHY_NOT, new_task_id, per_task_rows, select_rows
from mmpt.methods.prefix_attention import table_to_state


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

    def peft_mapping(self):
        # PEFT's prefix tuning fills the decoder's key/value cache, one [P, layer, K|V, head, d_head]
        # table as ours; whether that cache computes what mmpt's prefix does depends on the backbone's
        # positions, which mmpt/export/prefix_cache.py decides (and converts the keys for).
        if self.per_task:
            raise not_expressible(self.cfg.name, PER_TASK_WHY_NOT)
        if any(not s.startswith("decoder.") for s in self.sites):
            raise not_expressible(self.cfg.name, "PEFT's prefix tuning reaches the decoder's key/value cache only, and "
                                  f"this run puts prefixes in the encoder (method.placement={self.cfg.placement})")
        h, d = self.info["n_heads"], self.info["d_head"]
        config = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": self.prefix.shape[0],
                  "num_layers": len(self.sites), "token_dim": h * d, "num_attention_heads": h,
                  "num_transformer_submodules": 1}
        return PeftMapping(config, {"prompt_embeddings": Slot(self.prefix)})
