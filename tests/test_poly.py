"""MTTL skills: poly_lora / poly_ia3 banks, the task-to-skill selectors, granularity, diagnostics."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import METHOD_CFGS, compose_cfg, make_model, tiny_cfg, toy_batch
from mmpt.engine import checkpoint
from mmpt.engine.optim import build_optimizer
from mmpt.settings import optimizer
from mmpt.report.figures import draw
from mmpt.errors import ConfigError
from mmpt.methods.adapters import PolyLoRALinear
from mmpt.models import build_model
from mmpt.routers.skills import MoE, Poly, Private, build_selector

QV = r".*(SelfAttention|EncDecAttention)\.(q|v)"
ALL = r".*(SelfAttention|EncDecAttention)\.(q|k|v|o)|.*DenseReluDense\.w\w*"
POLY_LORA = dict(name="poly_lora", n_skills=4, n_splits=1, rank=4, alpha=8, dropout=0.0, target_modules=QV)
POLY_IA3 = dict(name="poly_ia3", n_skills=4, n_splits=1, target_modules=r".*(SelfAttention|EncDecAttention)\.(k|v)")
ROUTER = dict(name="poly", granularity="finegrained", temperature=1.0, straight_through=False, dropout=0.0,
              shared_skill=False)


def poly_model(method=None, router=None, n_tasks=3, seed=0, **over):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(), OmegaConf.create({**(method or POLY_LORA), **over}),
                       OmegaConf.create({**ROUTER, **(router or {})}), n_tasks=n_tasks)


def batch_for(model, task_ids):
    texts = ("the cat sat on the mat", "a dog", "birds fly south in winter", "rain")[:len(task_ids)]
    batch = toy_batch(model.tokenizer, texts=texts, labels=[0] * len(texts))
    batch["task_id"] = torch.tensor(task_ids)
    return batch


def randomise_b(model, seed=1):
    """Zero-initialised B makes every adapter a no-op; give the skills something to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.method.param_groups()["adapters"]:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_poly_with_one_skill_equals_lora():
    lora = make_model(dict(METHOD_CFGS["lora"], rank=4, alpha=8)).eval()
    randomise_b(lora)
    poly = poly_model(n_skills=1, n_tasks=2).eval()
    with torch.no_grad():
        for a, b in zip(lora.method._layers, poly.method._layers.values()):
            b.lora_A[0, 0].copy_(a.lora_A.T)
            b.lora_B[0, 0].copy_(a.lora_B.T)
    batch = batch_for(poly, [0, 1, 0])
    assert torch.allclose(poly.score(batch)[0], lora.score(batch)[0], atol=1e-5)
    poly.train(), lora.train()  # training: the relaxed-Bernoulli sample of a single skill normalises to 1
    assert torch.allclose(poly(batch)[0], lora(batch)[0], atol=1e-5)


def test_private_routing_equals_per_task_lora():
    loras = [make_model(dict(METHOD_CFGS["lora"], rank=4, alpha=8)).eval() for _ in range(2)]
    for t, lora in enumerate(loras):
        randomise_b(lora, seed=10 + t)
    poly = poly_model(n_skills=2, n_tasks=2, router={"name": "private"}).eval()
    with torch.no_grad():
        for t, lora in enumerate(loras):
            for a, b in zip(lora.method._layers, poly.method._layers.values()):
                b.lora_A[0, t].copy_(a.lora_A.T)
                b.lora_B[0, t].copy_(a.lora_B.T)
    batch = batch_for(poly, [0, 1, 1, 0])
    scores = poly.score(batch)[0]
    for t, lora in enumerate(loras):
        rows = batch["task_id"] == t
        assert torch.allclose(scores[rows], lora.score(batch)[0][rows], atol=1e-5)
    assert not torch.allclose(loras[0].score(batch)[0], loras[1].score(batch)[0], atol=1e-3)


def test_mhr_splits_mix_their_own_blocks():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6, bias=False)
    layer = PolyLoRALinear(base, n_skills=3, n_splits=2, rank=2, alpha=2, dropout=0.0)
    assert layer.lora_A.shape == (2, 3, 4, 2) and layer.lora_B.shape == (2, 3, 2, 3)
    with torch.no_grad():
        layer.lora_B.normal_()
    w = torch.softmax(torch.randn(2, 2, 3), -1)  # [batch, splits, skills]
    x = torch.randn(2, 5, 8)
    layer.weights = w
    out = layer(x)
    for b in range(2):  # by hand: mix each split's block, concatenate along d_in (A) and d_out (B)
        A = torch.cat([sum(w[b, q, s] * layer.lora_A[q, s] for s in range(3)) for q in range(2)], 0)
        B = torch.cat([sum(w[b, q, s] * layer.lora_B[q, s] for s in range(3)) for q in range(2)], 1)
        assert A.shape == (8, 2) and B.shape == (2, 6)
        assert torch.allclose(out[b], base(x[b]) + x[b] @ A @ B, atol=1e-5)
    with pytest.raises(ConfigError, match="method.n_splits"):
        PolyLoRALinear(torch.nn.Linear(9, 6), n_skills=3, n_splits=2, rank=2, alpha=2, dropout=0.0)


@pytest.mark.parametrize("method", [POLY_LORA, dict(POLY_LORA, n_splits=4), POLY_IA3])
def test_fresh_skills_change_nothing_and_gradients_reach_both_groups(method):
    model = poly_model(method).eval()
    plain = make_model("full").eval()
    batch = batch_for(model, [0, 1, 2])
    assert torch.allclose(model.score(batch)[0], plain.score(batch)[0], atol=1e-5)
    model.train()
    randomise_b(model)  # fresh banks are all alike, so the routing would get no gradient
    loss, _ = model(batch)
    loss.backward()
    groups = model.method.param_groups()
    assert set(groups) == {"adapters", "routing"}
    trained = {id(p) for ps in groups.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in trained), name
    for name, params in groups.items():
        assert any(p.grad.abs().sum() > 0 for p in params), name


def test_routing_and_adapters_get_their_own_lr():
    model = poly_model()
    cfg = OmegaConf.create(dict(name="adamw", lr=1e-3, weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8,
                                warmup_ratio=0.0, warmup_steps=None,
                                groups={"adapters": {"lr": 1e-3, "weight_decay": 0.01},
                                        "routing": {"lr": 0.1, "weight_decay": 0.0}}))
    opt, _, summary = build_optimizer(model.param_groups(), optimizer(cfg), 10)
    rows = {name: (n, lr, wd) for name, n, lr, wd in summary}
    n_layers = 2 * 2 + 2 * 2 * 2  # q, v of the encoder's and both decoder attentions, 2 layers each
    assert rows["routing"] == (n_layers * 3 * 4, 0.1, 0.0)  # a [3 tasks, 4 skills] table per layer
    assert rows["adapters"] == (n_layers * 4 * 4 * (32 + 32), 1e-3, 0.01)


@pytest.mark.parametrize("granularity,count", [("finegrained", 32), ("coarsegrained", 1), ("coderwise", 2),
                                               ("blockwise", 4), ("layerwise", 10)])
def test_granularity_decides_how_many_selectors(granularity, count):
    # every Linear of 2 + 2 blocks: encoder blocks have 2 sub-layers, decoder blocks 3
    model = poly_model(target_modules=ALL, router={"granularity": granularity})
    assert len(model.method.selectors) == count
    loss, _ = model(batch_for(model, [0, 2]))
    assert torch.isfinite(loss)


def test_poly_selector_samples_in_training_and_is_deterministic_at_eval():
    sel = Poly(3, 2, 4)
    with torch.no_grad():
        sel.logits.normal_()
    ids = torch.tensor([0, 2, 2])
    sel.train()
    a, b = sel(ids), sel(ids)
    assert not torch.allclose(a, b)
    sel.eval()
    expected = torch.sigmoid(sel.logits[ids].view(3, 2, 4))
    assert torch.allclose(sel(ids), expected / expected.sum(-1, keepdim=True))
    assert torch.equal(sel(ids), sel(ids))
    for w in (a, b, sel(ids)):
        assert w.shape == (3, 2, 4) and torch.allclose(w.sum(-1), torch.ones(3, 2))


def test_poly_options_straight_through_and_shared_skill():
    sel = Poly(2, 1, 4, straight_through=True).train()
    w = sel(torch.tensor([0, 1, 1, 0, 1]))
    for row in w.view(-1, 4):  # hard 0/1 forward, then normalised: the skills on share equally
        on = row[row > 0]
        assert torch.allclose(on, torch.full_like(on, 1 / max(len(on), 1)))
    (w * torch.arange(4.0)).sum().backward()  # ... and the relaxed sample's gradient flows back
    assert sel.logits.grad.abs().sum() > 0
    shared = Poly(2, 1, 4, shared_skill=True).eval()
    with torch.no_grad():
        shared.logits.fill_(-30.0)  # every routed skill off: the shared one carries everything
    assert torch.allclose(shared(torch.tensor([0, 1])), torch.tensor([0.0, 0, 0, 1]).expand(2, 1, 4), atol=1e-6)
    with pytest.raises(ConfigError, match="router.shared_skill"):
        Poly(2, 1, 1, shared_skill=True)


def test_moe_keeps_top_k_and_average_and_private_are_fixed():
    moe = MoE(5, 2, 6, top_k=2, noise_std=1.0).eval()
    with torch.no_grad():
        moe.logits.normal_()
    w = moe(torch.arange(5))
    assert ((w > 0).sum(-1) == 2).all() and torch.allclose(w.sum(-1), torch.ones(5, 2))
    top = moe.logits.view(5, 2, 6).topk(2, -1).indices
    assert torch.equal((w > 0).nonzero()[:, -1].view(5, 2, 2).sort(-1).values, top.sort(-1).values)
    avg = build_selector(OmegaConf.create({"name": "average"}), 5, 2, 4)
    assert torch.equal(avg(torch.tensor([0, 4])), torch.full((2, 2, 4), 0.25))
    private = Private(3, 1, 3)
    assert torch.equal(private(torch.tensor([2, 0])), torch.tensor([[[0.0, 0, 1]], [[1.0, 0, 0]]]))
    with pytest.raises(ConfigError, match="method.n_skills"):
        Private(3, 1, 4)
    with pytest.raises(ConfigError, match="router.top_k"):
        MoE(3, 1, 4, top_k=5)
    with pytest.raises(ConfigError, match="router.name"):
        build_selector(OmegaConf.create({"name": "input_topk"}), 3, 1, 4)


def test_routing_diagnostics_and_heatmap(tmp_path):
    model = poly_model(router={"granularity": "coarsegrained"}, n_tasks=2).eval()
    fresh = model.method.eval_stats([])
    assert fresh["routing/effective_skills"] == pytest.approx(4.0, abs=1e-3)
    assert fresh["routing/discreteness"] == pytest.approx(0.0, abs=1e-3)
    assert fresh["routing/sparsity"] == 0.0
    with torch.no_grad():  # task 0 uses skill 0 alone, task 1 skills 1 and 2
        model.method.selectors["all"].logits.copy_(torch.tensor([[20.0, -20, -20, -20], [-20, 20, 20, -20]]))
    stats = model.method.eval_stats([])
    assert stats["routing/effective_skills"] == pytest.approx((1 + 2) / 2, abs=1e-3)
    assert stats["routing/discreteness"] == pytest.approx(1.0, abs=1e-3)
    assert stats["routing/sparsity"] == pytest.approx(5 / 8)
    figures = draw(model.method.figures(), tmp_path)
    assert (tmp_path / "routing_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert figures == {"routing/heatmap": str(tmp_path / "routing_heatmap.png")}


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = poly_model(dict(POLY_LORA, n_splits=2))
    batch = batch_for(model, [0, 1, 2])
    opt = torch.optim.AdamW([p for ps in model.method.param_groups().values() for p in ps], lr=0.05)
    for _ in range(3):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    before = model.score(batch)[0]
    checkpoint.save(tmp_path / "ck", model, {"method": "poly_lora"})
    fresh = poly_model(dict(POLY_LORA, n_splits=2), seed=1).eval()
    assert not torch.allclose(fresh.score(batch)[0], before)
    checkpoint.load_weights(tmp_path / "ck", fresh)
    assert torch.equal(fresh.score(batch)[0], before)


def test_task_ids_outside_the_table_are_refused():
    model = poly_model(n_tasks=2)
    with pytest.raises(ValueError, match="outside"):
        model(batch_for(model, [0, 2]))


@pytest.mark.parametrize("method,router,key", [
    (dict(POLY_LORA, n_skills=0), {}, "method.n_skills"),
    (dict(POLY_LORA, n_splits=3), {}, "method.n_splits"),  # 32 is not divisible by 3
    (dict(POLY_LORA, dropout=1.0), {}, "method.dropout"),
    (POLY_LORA, {"granularity": "headwise"}, "router.granularity"),
    (POLY_LORA, {"dropout": 1.0}, "router.dropout"),
    (POLY_LORA, {"name": "moe", "noise_std": -1.0}, "router.noise_std"),
    (POLY_IA3, {"name": "none"}, "router"),
])
def test_bad_skill_configs_name_the_key(method, router, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        poly_model(method, router)


# -- defaults and behaviours of the MTTL seed (first commit of microsoft/mttl with pl_train.py) --

def seed_default_model(*over):
    """A poly_lora model from the shipped configs (conf/method/poly_lora.yaml, conf/router/poly.yaml)."""
    cfg = compose_cfg(["model=t5_tiny", "model.dropout=0.0", "method=poly_lora", "method.n_skills=3",
                       "method.rank=4", *over])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.method, cfg.router, n_tasks=2), cfg


def test_default_skill_update_is_x_a_b_over_rank():
    model, cfg = seed_default_model()
    name, layer = next(iter(model.method._layers.items()))
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.weights = torch.tensor([[[1.0, 0.0, 0.0]]])  # skill 0 alone
    x = torch.randn(1, 5, layer.base.in_features)
    A, B = layer.lora_A[0, 0].T, layer.lora_B[0, 0].T  # as the spec writes them: [r, d_in], [d_out, r]
    assert torch.allclose(layer(x) - layer.base(x), (x @ A.T) @ B.T / cfg.method.rank, atol=1e-6)


def test_default_targets_are_the_attention_projections_and_ffn_is_an_option():
    model, _ = seed_default_model()
    names = list(model.method._layers)
    assert len(names) == 4 * (2 + 2 * 2)  # q, k, v, o of 2 encoder and 2 x 2 decoder attentions
    assert all(n.split(".")[-1] in "qkvo" and "DenseReluDense" not in n for n in names)
    ffn, _ = seed_default_model("method.target_modules=poly_ffn")
    assert len(ffn.method._layers) == len(names) + 2 * 4  # + wi, wo of the 4 blocks


def test_moe_defaults_follow_the_reference_and_renormalise_over_skills():
    model, _ = seed_default_model("router=moe", "method.n_skills=6", "method.n_splits=2")
    sel = next(iter(model.method.selectors.values()))
    assert (sel.top_k, sel.noise_std) == (3, pytest.approx(1 / 6))
    sel.train()
    with torch.no_grad():
        sel.logits.normal_()
    ids = torch.tensor([1, 0, 1])
    torch.manual_seed(5)
    w = sel(ids)
    torch.manual_seed(5)  # by hand: N(0, 1) / n_skills noise, softmax, top 3, renormalised per split
    probs = (sel.logits[ids].view(3, 2, 6) + torch.randn(3, 2, 6) / 6).softmax(-1)
    top = probs.topk(3, -1)
    expected = torch.zeros_like(probs).scatter(-1, top.indices, top.values / top.values.sum(-1, keepdim=True))
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2))  # per split (the reference sums over splits)


def test_dropout_turns_sampled_skills_off_in_training_only():
    sel = Poly(1, 1, 8, dropout=0.5)
    with torch.no_grad():
        sel.logits.fill_(30.0)  # every skill on in every sample
    ids = torch.zeros(2000, dtype=torch.long)
    torch.manual_seed(0)
    probs = sel.train().probs(ids, sample=True)
    assert ((probs == 0) | (probs > 0.99)).all()  # a dropped skill is off, the others stay on
    assert (probs == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(sel.eval()(ids[:3]), torch.full((3, 1, 8), 1 / 8))  # eval: nothing dropped
    shared = Poly(1, 1, 4, dropout=0.5, shared_skill=True).train()
    assert (shared.probs(ids, sample=True)[..., -1] == 1).all()  # the shared skill is never dropped


def test_straight_through_eval_rounds_like_training():
    sel = Poly(1, 1, 4, straight_through=True)
    with torch.no_grad():
        sel.logits.copy_(torch.tensor([[2.0, -2.0, 0.5, -0.5]]))
    ids = torch.zeros(1, dtype=torch.long)
    assert torch.equal(sel.eval()(ids), torch.tensor([[[0.5, 0.0, 0.5, 0.0]]]))
    trained = sel.train().probs(torch.zeros(500, dtype=torch.long), sample=True)
    assert torch.allclose(trained, trained.round(), atol=1e-6)  # training: hard samples as well
    assert 0 < trained.round().mean() < 1


@pytest.mark.parametrize("granularity", ["coarsegrained", "coderwise"])
def test_a_shared_selector_samples_each_layer_independently(granularity):
    model = poly_model(target_modules=ALL, router={"granularity": granularity})
    batch = batch_for(model, [0, 2, 1])
    for training in (True, False):
        model.train(training)
        with model.method.routing(batch):
            weights = {name: layer.weights.clone() for name, layer in model.method._layers.items()}
        for key in model.method.selectors:  # the layers that share this selector
            ws = [w for name, w in weights.items() if model.method._key[name] == key]
            same = [torch.equal(ws[0], w) for w in ws[1:]]
            assert len(ws) > 2 and (not any(same) if training else all(same)), (key, training)
