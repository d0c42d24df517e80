"""The one prefix mechanism: exactness with an empty prefix, agreement with the cache route,
and the attention a prefix produces computed by hand."""
import torch
import torch.nn.functional as F

from conftest import make_model, toy_batch
from mmpt.methods.prefix_attention import PrefixState


def logits(model, batch, **kw):
    return model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"], **kw).logits


def test_empty_prefix_equals_stock_sdpa_exactly():
    model = make_model("prefix").eval()
    batch = toy_batch(model.tokenizer)
    h, d = model.method.info["n_heads"], model.method.info["d_head"]
    empty = PrefixState({s: (torch.zeros(1, h, 0, d), torch.zeros(1, h, 0, d)) for s in model.method.info["sites"]})
    ours = logits(model, batch, mmpt_prefix=empty)
    model.backbone.set_attn_implementation("sdpa")
    stock = logits(model, batch)
    assert torch.equal(ours, stock)


def _by_hand(att, x, pk, pv, bias, keep):
    """Reference attention: prefix keys first, zero position bias for them, keep = visible keys."""
    b, s, _ = x.shape
    h, d, p = att.n_heads, att.key_value_proj_dim, pk.shape[2]
    q = att.q(x).view(b, s, h, d).transpose(1, 2)
    k = torch.cat([pk, att.k(x).view(b, s, h, d).transpose(1, 2)], 2)
    v = torch.cat([pv, att.v(x).view(b, s, h, d).transpose(1, 2)], 2)
    scores = q @ k.transpose(2, 3) + F.pad(bias, (p, 0))  # T5 does not scale by 1/sqrt(d)
    scores = scores.masked_fill(~F.pad(keep, (p, 0), value=True), float("-inf"))
    return att.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h * d))


def test_decoder_prefix_attention_by_hand_is_causal_over_tokens_only():
    """With no mask (training), decoder self-attention stays causal over tokens; the prefix is
    visible to every position. Unlike PEFT's cache route, prefix keys carry no relative position
    (zero bias) and the tokens keep positions 0..T-1: the same rule as in the encoder."""
    torch.manual_seed(0)
    model = make_model("prefix").eval()
    att = model.backbone.decoder.block[1].layer[0].SelfAttention
    b, s, p, h, d = 2, 4, 3, att.n_heads, att.key_value_proj_dim
    x = torch.randn(b, s, model.backbone.config.d_model)
    pk, pv, bias = torch.randn(b, h, p, d), torch.randn(b, h, p, d), torch.randn(1, h, s, s)
    out = att(x, mask=None, position_bias=bias, mmpt_prefix=PrefixState({"decoder.1": (pk, pv)}))[0]
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None, None].expand(b, 1, s, s)
    assert torch.allclose(out, _by_hand(att, x, pk, pv, bias, causal), atol=1e-5)


def test_encoder_prefix_attention_by_hand():
    """Prefix keys get zero position bias, are always visible, and enter softmax with the tokens."""
    torch.manual_seed(0)
    model = make_model("prefix").eval()
    att = model.backbone.encoder.block[1].layer[0].SelfAttention
    b, s, p, h, d = 2, 5, 3, att.n_heads, att.key_value_proj_dim
    x = torch.randn(b, s, model.backbone.config.d_model)
    pk, pv = torch.randn(b, h, p, d), torch.randn(b, h, p, d)
    bias = torch.randn(1, h, s, s)
    mask = torch.ones(b, 1, s, s, dtype=torch.bool)
    mask[1, ..., 3:] = False  # second example: last two tokens are padding
    out = att(x, mask=mask, position_bias=bias, mmpt_prefix=PrefixState({"encoder.1": (pk, pv)}))[0]
    assert torch.allclose(out, _by_hand(att, x, pk, pv, bias, mask), atol=1e-5)


def test_layer_l_prefix_reaches_only_layer_l():
    """Changing the prefix of encoder layer 1 leaves layer 0's output untouched and changes layer 1."""
    model = make_model("prefix").eval()
    batch = toy_batch(model.tokenizer)
    kw, _ = model.method.prepare(batch, model.backbone)
    enc = model.backbone.get_encoder()

    def hidden(state):
        out = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  mmpt_prefix=state, output_hidden_states=True)
        return out.hidden_states

    base = hidden(kw["mmpt_prefix"])
    kv = dict(kw["mmpt_prefix"].kv)
    k1, v1 = kv["encoder.1"]
    kv["encoder.1"] = (k1 + 1.0, v1)
    changed = hidden(PrefixState(kv))
    assert torch.equal(base[1], changed[1])  # after layer 0
    assert not torch.allclose(base[2], changed[2])  # after layer 1


def test_placement_selects_sites():
    for placement, stacks in (("encoder", {"encoder"}), ("decoder", {"decoder"}), ("both", {"encoder", "decoder"})):
        model = make_model({"name": "prefix", "num_virtual_tokens": 2, "placement": placement, "init_std": 1.0})
        kw, _ = model.method.prepare(toy_batch(model.tokenizer), model.backbone)
        assert {s.split(".")[0] for s in kw["mmpt_prefix"].kv} == stacks
        assert len(kw["mmpt_prefix"].kv) == 2 * len(stacks)
