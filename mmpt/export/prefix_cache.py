"""mmpt's prefix as PEFT's prefix tuning, which puts it in a decoder-only LM's key/value cache.

Both give every layer's attention P extra keys and values that every token attends to. They
differ in positions: PEFT's prefix fills cache positions 0..P-1, so the real tokens move to
P..P+T-1, while mmpt's prefix has no position and the tokens keep 0..T-1 (docs/differences.md).
- RoPE (Llama, Mistral, Qwen2, SmolLM): scores between real tokens depend only on their distance,
  which the common shift keeps. A query at position P+i scores a cache key k' as R(P+i)q . k' =
  R(i)q . R(P)^T k', so writing mmpt's key k as k' = R(P) k (the model's own rotation to position P)
  makes every score, and so every output, mmpt's. The values carry no position and stay as they are.
- Learned absolute positions (GPT-2) feed the shifted positions into every real token's input,
  and on an encoder-decoder (T5) the cache keys get relative position biases: no prefix makes up
  for either, so those runs are refused.
"""
import torch

from mmpt.export.mapping import ExportError

# RoPE kinds whose frequencies do not depend on the sequence length: R(P + i) = R(i) R(P)
FIXED_ROPE = ("default", "linear", "llama3", "yarn")
WHY = "method prefix cannot be written as a PEFT adapter: "


def _rope(model):
    """(rotary embedding module, the family's apply_rotary_pos_emb), or the reason why not."""
    backbone = model.backbone
    config = backbone.config
    positions = model.family.positions(backbone)
    if positions == "relative":
        raise ExportError(WHY + f"on {config.model_type} PEFT puts the prefix in the decoder's cache, where its keys "
                          "get relative position biases that mmpt's prefix keys do not have, and PEFT's layout "
                          "gives decoder layers l and l+L/2 one shared prefix (docs/differences.md)")
    if positions != "rope":
        raise ExportError(WHY + f"PEFT's cache prefix moves the real tokens to positions P..P+T-1, which "
                          f"{config.model_type}'s learned absolute positions turn into other inputs; mmpt's "
                          "prefix leaves the positions alone (docs/differences.md)")
    kind = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if kind not in FIXED_ROPE:
        raise ExportError(WHY + f"{config.model_type}'s RoPE ({kind}) changes with the sequence length, so PEFT's "
                          "shift of the real tokens' positions cannot be undone on the prefix keys")
    return model.family.rotary(backbone)


@torch.no_grad()
def convert(table: torch.Tensor, model, config: dict, inverse: bool = False) -> torch.Tensor:
    """mmpt's prefix table -> PEFT's prompt_embeddings (inverse: back). Both are laid out
    [P, layer, key|value, key/value head, d_head]; only the keys change (rotated to position P).
    ExportError where PEFT's cache prefix cannot compute mmpt's prefix on this backbone."""
    rope, apply = _rope(model)
    p, layers, heads = config["num_virtual_tokens"], config["num_layers"], config["num_attention_heads"]
    kv = table.float().reshape(p, layers, 2, heads, config["token_dim"] // heads).clone()
    keys = kv[:, :, 0].reshape(-1, 1, 1, kv.shape[-1])  # every key its own row, at one position
    cos, sin = rope(keys, torch.tensor([[p]]))
    scale = getattr(rope, "attention_scaling", 1.0)  # YaRN scales queries and keys alike: not a rotation
    cos, sin = cos / scale, sin / scale * (-1 if inverse else 1)
    _, rotated = apply(keys, keys, cos, sin)
    kv[:, :, 0] = rotated.reshape(kv[:, :, 0].shape)
    return kv.reshape(table.shape)
