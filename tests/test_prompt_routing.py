"""SMoP (method=prompt_routing): the prepended prompt by hand, gradients, learning, eval noise-free."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny_cfg, toy_batch, fit_batch
from mmpt.errors import ConfigError
from mmpt.models import build_model

BASE = dict(name="prompt_routing", num_virtual_tokens=3, num_virtual_tokens_full=12, init="normal",
            topk=1, perturb_router=True, router_dropout=0.2, gumbel=False)


def make(seed=0, **over):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(), OmegaConf.create({**BASE, **over}), OmegaConf.create({"name": "input_topk"}))


@pytest.mark.parametrize("topk", [1, 2])
def test_prepended_prompt_is_the_weighted_sum_of_the_chosen_prompts(topk):
    model = make(topk=topk).eval()
    meth, batch = model.method, toy_batch(model.tokenizer)
    kw, aux = meth.prepare(batch, model.backbone)
    route = meth.router(model.backbone.get_input_embeddings()(batch["input_ids"]), batch["attention_mask"])
    pool = meth.prompts.view(4, 3, -1)
    want = sum(route.weights[:, k, None, None] * pool[route.index[:, k]] for k in range(topk))
    assert torch.allclose(kw["inputs_embeds"][:, :3], want, atol=1e-6)
    tokens = model.backbone.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(kw["inputs_embeds"][:, 3:], tokens)
    assert torch.equal(kw["attention_mask"][:, :3], torch.ones(3, 3, dtype=torch.long))
    assert torch.equal(kw["attention_mask"][:, 3:], batch["attention_mask"])
    assert torch.equal(aux["router/index"], route.index)


def test_groups_counts_and_gradients():
    model = make()
    groups = model.method.param_groups()
    assert {k: [tuple(p.shape) for p in v] for k, v in groups.items()} == {"prompt": [(12, 32)], "router": [(4, 32)]}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 12 * 32 + 4 * 32
    model(toy_batch(model.tokenizer))[0].backward()
    in_groups = {id(p) for v in groups.values() for p in v}
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in in_groups), n
    assert all(p.grad.abs().sum() > 0 for v in groups.values() for p in v)


def test_learns_a_fixed_batch():
    model = make(num_virtual_tokens=8, num_virtual_tokens_full=32)  # 4 prompts of 8 tokens
    batch = toy_batch(model.tokenizer)
    # perturbed routing keeps switching prompts: slower than prompt tuning
    losses = fit_batch(model, batch, lr=0.3, steps=25)
    assert losses[-1] < 0.7 * losses[0], losses


def test_noise_in_training_only_and_loads():
    model = make()
    batch = toy_batch(model.tokenizer)
    assert not torch.equal(model(batch)[0], model(batch)[0])  # perturbed router
    model.eval()
    (a, aux), (b, _) = model.score(batch), model.score(batch)
    assert torch.equal(a, b)
    stats = model.method.eval_stats([aux])
    assert sum(stats[f"router/load_{r}"] for r in range(4)) == pytest.approx(1.0)
    assert stats["router/load_" + str(aux["router/index"][0, 0].item())] >= 1 / 3


@pytest.mark.parametrize("over,key", [
    (dict(num_virtual_tokens_full=3), "method.num_virtual_tokens_full"),  # one prompt: nothing to route
    (dict(num_virtual_tokens_full=10), "method.num_virtual_tokens_full"),
    (dict(topk=5), "method.topk"),
    (dict(init="text"), "method.init"),
])
def test_bad_config_names_the_key(over, key):
    with pytest.raises(ConfigError) as err:
        make(**over)
    assert err.value.key == key
