"""Gradient checkpointing (trainer.gradient_checkpointing): every method on every backbone family
gives the loss and the gradients it gives without it, the blocks really run twice, and the prefix
attention gets its prefix again in the recomputation. (Its memory: bench/memory.py.)"""
import pytest
import torch
from omegaconf import open_dict

from conftest import compose_cfg, toy_batch
from mmpt.engine import recompute
from mmpt.settings import training
from mmpt.errors import ConfigError
from mmpt.methods import prefix_attention
from mmpt.models import build_model

METHODS = ["full", "prompt_tuning", "prefix", "lora", "ia3", "prefix_routing", "prompt_routing", "poly_lora",
           "poly_ia3"]
FAMILIES = {"t5": ["model=t5_tiny"], "llama": ["model=llama_tiny"], "gpt2": ["model=gpt2_tiny"],
            "bert": ["model=local"]}  # model.name_or_path: the tiny BERT of conftest


def model_of(family, method, bert_dir):
    over = FAMILIES[family] + [f"method={method}", "dataset=cb"]
    if family == "bert":
        over.append(f"model.name_or_path={bert_dir}")
    cfg = compose_cfg(over)
    with open_dict(cfg):
        cfg.model.dropout = 0.1  # dropout on where the family has it: recomputation must redraw the same masks
    from mmpt.data.mixture import tasks_of as head_tasks

    torch.manual_seed(0)
    return build_model(cfg.model, cfg.method, cfg.get("router"), tasks=head_tasks(cfg.dataset))


def loss_and_grads(model, batch, seed=0):
    model.train()
    torch.manual_seed(seed)  # the same dropout masks and routing noise for both runs
    loss, _ = model(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_changes_neither_loss_nor_gradients(family, method, tiny_bert_dir):
    model = model_of(family, method, tiny_bert_dir)
    batch = toy_batch(model.tokenizer)
    off = loss_and_grads(model, batch)
    calls = []
    attn = [m for m in model.backbone.modules() if getattr(m, "mmpt_site", None)][0]
    attn.register_forward_hook(lambda *a: calls.append(1))
    loss_and_grads(model, batch)
    plain = len(calls)
    recompute.enable(model, True)
    calls.clear()
    on = loss_and_grads(model, batch)
    assert len(calls) == 2 * plain  # each block ran again in backward
    assert on[0] == pytest.approx(off[0], rel=1e-6, abs=1e-6)
    assert on[1].keys() == off[1].keys() and on[1]
    for name, g in off[1].items():
        assert torch.allclose(on[1][name], g, rtol=1e-4, atol=1e-6), name


def test_the_prefix_reaches_the_attention_in_the_recomputation(monkeypatch):
    model = model_of("llama", "prefix_routing", None)
    recompute.enable(model, True)
    seen = []
    real = prefix_attention.mmpt_prefix_attention

    def spy(module, *args, mmpt_prefix=None, **kw):
        seen.append(mmpt_prefix is not None and module.mmpt_site in mmpt_prefix.kv)
        return real(module, *args, mmpt_prefix=mmpt_prefix, **kw)

    monkeypatch.setitem(prefix_attention.AttentionInterface._global_mapping, prefix_attention.ATTN_NAME, spy)
    loss_and_grads(model, toy_batch(model.tokenizer))
    layers = model.backbone.config.num_hidden_layers
    assert seen == [True] * (2 * layers)  # forward, then each layer again in backward, all with the prefix


def test_gradient_checkpointing_takes_a_boolean():
    cfg = compose_cfg(["model=t5_tiny", "method=lora", "trainer.gradient_checkpointing=yes"])
    with pytest.raises(ConfigError, match="trainer.gradient_checkpointing"):
        training(cfg.trainer)
