"""The one place where prefixes enter attention.

transformers 5 drops `past_key_values` in the T5 encoder, so prefixes cannot ride on the cache.
Instead every self-attention module gets a `mmpt_site` tag ("encoder.3", "decoder.0") and the
model's attention function is `mmpt_prefix_attention`: for a tagged module it prepends that
site's prefix keys/values, left-pads the position bias with zeros (prefix tokens have no relative
position) and the mask with "attend", then calls the stock sdpa kernel. The prefix tensors reach
it as the keyword `mmpt_prefix`, which transformers passes from `model(...)` down to attention,
so no module holds per-batch state. With no prefix the stock computation runs unchanged.

Decoder-only LMs (models/causal.py) use the same function: their attention modules hand it keys
already rotated by RoPE and already joined with the cache, so the prefix carries no position and
never enters the cache; it has the model's key/value head count (sdpa repeats it over the query
groups of grouped-query attention). Their mask arrives as None (no padding: causal is built here,
offset by the cached length) or as a 4D mask with the past, which is padded with "attend".
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTN_NAME = "mmpt_prefix"


@dataclass
class PrefixState:
    """Per-site prefix keys and values, each [B or 1, H, P, d_head] (P may differ per site)."""
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def expand(self, n: int) -> "PrefixState":
        """Repeat each example's prefix n times (rank scoring runs B*C decoder rows)."""
        def rep(t):
            return t if t.shape[0] == 1 else t.repeat_interleave(n, dim=0)
        return PrefixState({s: (rep(k), rep(v)) for s, (k, v) in self.kv.items()})


def mmpt_prefix_attention(module, query, key, value, attention_mask, position_bias=None,
                          mmpt_prefix: PrefixState | None = None, **kwargs):
    site = getattr(module, "mmpt_site", None)
    if mmpt_prefix is None or site not in mmpt_prefix.kv:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      position_bias=position_bias, **kwargs)
    pk, pv = mmpt_prefix.kv[site]
    b, p = query.shape[0], pk.shape[2]
    key = torch.cat([pk.to(key.dtype).expand(b, -1, -1, -1), key], dim=2)
    value = torch.cat([pv.to(value.dtype).expand(b, -1, -1, -1), value], dim=2)
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None and getattr(module, "is_causal", False) and q_len > 1:
        # sdpa's is_causal aligns top-left, which is wrong once keys are longer than queries:
        # build the causal mask over the real keys and let every query see the whole prefix.
        past = k_len - p - q_len
        i = torch.arange(q_len, device=query.device)[:, None]
        j = torch.arange(k_len - p, device=query.device)[None, :]
        attention_mask = (j <= i + past)[None, None]
    if attention_mask is not None:
        fill = True if attention_mask.dtype == torch.bool else 0.0
        attention_mask = F.pad(attention_mask, (p, 0), value=fill)
    if position_bias is not None:
        position_bias = F.pad(position_bias, (p, 0), value=0.0)
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  position_bias=position_bias, is_causal=False, **kwargs)


AttentionInterface.register(ATTN_NAME, mmpt_prefix_attention)
# Without a registered mask function transformers passes attention_mask=None to custom kernels.
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def enable(model) -> None:
    """Route the model's attention through `mmpt_prefix_attention`."""
    model.set_attn_implementation(ATTN_NAME)


def table_to_state(table: torch.Tensor, sites: list[str], n_heads: int, d_head: int,
                   gate: torch.Tensor | None = None) -> PrefixState:
    """Split a prefix table into per-site keys/values.

    table: [B or 1, P, len(sites) * 2 * n_heads * d_head], one row per prefix token holding K and V
    for every site (the layout of the reference's embedding tables). gate: optional
    [B or 1, P, len(sites)] multiplier (adaptive masks); token t of site s is scaled by gate[:, t, s].
    """
    b, p, _ = table.shape
    kv = table.view(b, p, len(sites), 2, n_heads, d_head)
    if gate is not None:
        kv = kv * gate[:, :, :, None, None, None]
    kv = kv.permute(2, 3, 0, 4, 1, 5)  # [sites, 2, B, H, P, d_head]
    return PrefixState({s: (kv[i, 0], kv[i, 1]) for i, s in enumerate(sites)})
