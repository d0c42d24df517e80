"""Deep prefix tuning (Li & Liang 2021): per-layer key/value prefixes in self-attention.

The prefix is one table [P, sites * 2 * H * d_head], N(0, init_std) initialised, with no
reparameterisation MLP (as in the MMPT reference). Layer l's rows go to layer l of every stack the
placement names.
"""
import torch
from torch import nn

from mmpt.export.mapping import PeftMapping, Slot, not_expressible
from mmpt.methods.base import PLACEMENTS, Method, choose, positive
from mmpt.methods.prefix_attention import table_to_state


class Prefix(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.sites = self.placement_sites(choose(cfg, "placement", PLACEMENTS))
        n = positive(cfg, "num_virtual_tokens")
        width = len(self.sites) * 2 * info["n_heads"] * info["d_head"]
        self.prefix = nn.Parameter(torch.randn(n, width) * cfg.get("init_std", 1.0))

    def prefix_state(self, table, gate=None):
        return table_to_state(table, self.sites, self.info["n_heads"], self.info["d_head"], gate)

    def prepare(self, batch, backbone):
        kw, aux = super().prepare(batch, backbone)
        kw["mmpt_prefix"] = self.prefix_state(self.prefix[None])
        return kw, aux

    def param_groups(self):
        return {"prefix": [self.prefix]}

    def peft_mapping(self):
        # PEFT's prefix tuning fills the decoder's key/value cache, one [P, layer, K|V, head, d_head]
        # table as ours; whether that cache computes what mmpt's prefix does depends on the backbone's
        # positions, which mmpt/export/prefix_cache.py decides (and converts the keys for).
        if any(not s.startswith("decoder.") for s in self.sites):
            raise not_expressible(self.cfg.name, "PEFT's prefix tuning reaches the decoder's key/value cache only, and "
                                  f"this run puts prefixes in the encoder (method.placement={self.cfg.placement})")
        h, d = self.info["n_heads"], self.info["d_head"]
        config = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": self.prefix.shape[0],
                  "num_layers": len(self.sites), "token_dim": h * d, "num_attention_heads": h,
                  "num_transformer_submodules": 1}
        return PeftMapping(config, {"prompt_embeddings": Slot(self.prefix)})
