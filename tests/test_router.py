"""The input router: pooling, orthogonal init, noise in training only, Gumbel, top-k, statistics,
and how `method.*` router keys and the `router` config group relate."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, tiny_cfg
from mmpt.errors import ConfigError
from mmpt.models import build_model
from mmpt.routers.input_router import InputRouter, Routing, route_counts, route_stats, router_options


def inputs(b=6, s=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(b, s, d, generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 4:] = 0  # padded example
    return embeds, mask


def router(**kw):
    torch.manual_seed(0)
    return InputRouter(16, 4, **kw)


def test_orthogonal_init_and_mean_pooling_over_real_tokens_only():
    r = router().eval()
    w = r.linear.weight
    assert r.linear.bias is None
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)  # R < d: orthonormal rows
    embeds, mask = inputs()
    out = r(embeds, mask)
    pooled = embeds[1, :4].mean(0)
    assert torch.allclose(out.probs[1], (w @ pooled).softmax(-1), atol=1e-6)
    changed = embeds.clone()
    changed[1, 4:] += 100.0  # padding content must not matter
    assert torch.equal(r(changed, mask).probs, out.probs)


def test_perturbation_is_the_multiplicative_formula_in_training_only():
    r = router(perturb=True)
    embeds, mask = inputs()
    z = r.linear((embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    torch.manual_seed(5)
    noisy = r.train()(embeds, mask).probs
    torch.manual_seed(5)
    eps = torch.randn_like(z)
    assert torch.allclose(noisy, (z * (1 + eps)).softmax(-1), atol=1e-5)
    assert not torch.allclose(r(embeds, mask).probs, noisy)  # fresh noise each call
    r.eval()
    assert torch.allclose(r(embeds, mask).probs, z.softmax(-1), atol=1e-6)
    assert torch.equal(r(embeds, mask).probs, r(embeds, mask).probs)


def test_perturbation_noise_carries_no_gradient():
    """Forward z (1 + eps); backward as if z were unperturbed (the added eps * z is detached)."""
    r = router(perturb=True).train()
    embeds, mask = inputs()
    torch.manual_seed(1)
    r(embeds, mask).probs[:, 0].sum().backward()
    ours, w = r.linear.weight.grad.clone(), r.linear.weight
    pooled = (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.manual_seed(1)
    eps = torch.randn(6, 4)

    def grad(noisy):
        return torch.autograd.grad(noisy(pooled @ w.T).softmax(-1)[:, 0].sum(), w)[0]

    assert torch.allclose(ours, grad(lambda z: z + (eps * z).detach()), atol=1e-6)
    assert not torch.allclose(ours, grad(lambda z: z * (1 + eps)), atol=1e-4)


def test_dropout_replaces_noise_when_not_perturbing():
    r = router(perturb=False, dropout=0.5).train()
    embeds, mask = inputs()
    a, b = r(embeds, mask).probs, r(embeds, mask).probs
    assert not torch.allclose(a, b)
    r.eval()
    assert torch.equal(r(embeds, mask).probs, r(embeds, mask).probs)


def test_topk_weights_are_the_largest_probabilities():
    r = router(topk=2, perturb=False, dropout=0.0).eval()
    out = r(*inputs())
    assert out.index.shape == (6, 2) and out.weights.shape == (6, 2)
    top = out.probs.sort(-1, descending=True)
    assert torch.equal(out.weights, top.values[:, :2]) and torch.equal(out.index, top.indices[:, :2])


def test_gumbel_is_hard_straight_through_in_training_and_argmax_in_eval():
    r = router(gumbel=True, perturb=False, dropout=0.0)
    embeds, mask = inputs()
    picks = set()
    r.train()
    for _ in range(40):
        out = r(embeds, mask)
        assert torch.equal(out.weights.detach(), torch.ones(6, 1))  # hard: weight 1 forward
        picks.add(tuple(out.index[:, 0].tolist()))
    assert len(picks) > 1  # sampled
    out.weights.sum().backward()
    assert r.linear.weight.grad.abs().sum() > 0  # straight-through gradient
    r.eval()
    a, b = r(embeds, mask), r(embeds, mask)
    assert torch.equal(a.index, b.index) and torch.equal(a.index[:, 0], a.probs.argmax(-1))
    assert torch.equal(a.weights, torch.ones(6, 1))


def test_route_counts_sum_to_the_batch_and_stats_by_hand():
    index = torch.tensor([[0], [2], [2], [3], [2]])
    counts = route_counts(index, 4)
    assert counts.tolist() == [1, 0, 3, 1] and counts.sum() == 5
    uniform = torch.full((5, 4), 0.25)
    stats = route_stats([{"router/probs": uniform[:2], "router/index": index[:2]},
                         {"router/probs": uniform[2:], "router/index": index[2:]}, {}], 4)
    assert stats["router/load_2"] == pytest.approx(0.6) and stats["router/load_1"] == 0
    assert sum(stats[f"router/load_{r}"] for r in range(4)) == pytest.approx(1.0)
    assert stats["router/max_load"] == pytest.approx(0.6)
    assert stats["router/entropy"] == pytest.approx(math.log(4))
    one_hot = torch.eye(4)[[1, 1, 1]]  # collapse: everything on route 1
    collapsed = route_stats([{"router/probs": one_hot, "router/index": torch.ones(3, 1, dtype=torch.long)}], 4)
    assert collapsed["router/max_load"] == 1.0 and collapsed["router/entropy"] == pytest.approx(0.0)
    assert route_stats([], 4) == {}


def test_routing_aux_is_detached():
    out = Routing(torch.rand(2, 3, requires_grad=True), torch.rand(2, 1), torch.zeros(2, 1, dtype=torch.long))
    assert not any(t.requires_grad for t in out.aux().values())


OPTS = dict(name="prefix_routing", topk=1, perturb_router=True, router_dropout=0.2, gumbel=False)


@pytest.mark.parametrize("over,router_cfg,key", [
    ({"topk": 5}, {"name": "input_topk"}, "method.topk"),
    ({"topk": 0}, {"name": "input_topk"}, "method.topk"),
    ({"topk": 2, "gumbel": True}, {"name": "input_topk"}, "method.gumbel"),
    ({"router_dropout": 1.0}, {"name": "input_topk"}, "method.router_dropout"),
    ({"perturb_router": "yes"}, {"name": "input_topk"}, "method.perturb_router"),
    ({}, {"name": "input_topk", "gumbel_tau": 0}, "router.gumbel_tau"),
    ({}, {"name": "other"}, "router"),
])
def test_bad_router_settings_name_the_key(over, router_cfg, key):
    with pytest.raises(ConfigError) as err:
        router_options(OmegaConf.create({**OPTS, **over}), 4, OmegaConf.create(router_cfg))
    assert err.value.key == key


@pytest.mark.parametrize("method", ["prefix_routing", "prompt_routing"])
def test_method_keys_default_to_the_router_group_and_override_it(method):
    """`router.topk=2` sets the default of every routed method; `method.topk` overrides it."""
    def built(*overrides):
        cfg = compose_cfg([f"method={method}", *overrides])
        return build_model(tiny_cfg(), cfg.method, cfg.router).method.router

    assert built().topk == 1 and built().perturb is True
    assert built("router.topk=2").topk == 2
    assert built("method.topk=3").topk == 3
    assert built("router.topk=2", "method.topk=3").topk == 3  # the method's key wins
    r = built("router.perturb=false", "router.dropout=0.1")
    assert r.perturb is False and r.dropout == 0.1
    assert built("router.gumbel=true").gumbel is True
