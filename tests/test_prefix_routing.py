"""MMPT (method=prefix_routing): equivalence to prefix tuning, the forward formula by hand, which
parameters exist and learn in every variant, noise in training only, diagnostics, bad configs."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_model, tiny_cfg, toy_batch, fit_batch
from mmpt.errors import ConfigError
from mmpt.report.figures import draw
from mmpt.models import build_model
from test_cli import run_cli

ROUTER = {"name": "input_topk", "gumbel_tau": 1.0}
BASE = dict(name="prefix_routing", num_virtual_tokens=2, num_virtual_tokens_full=6, num_shared_virtual_tokens=3,
            share_type="only", topk=1, perturb_router=True, router_dropout=0.2, gumbel=False,
            apply_adaptive_mask=True, apply_adaptive_subset_mask=True, mask_init_mean=2.5,
            mask_init_std=0.5, placement="both")
MASKS = {"no mask": (False, False), "shared mask": (True, False), "subset mask": (True, True)}
COMBOS = [(share, mask) for share in ("only", "add", "prepend", "none") for mask in MASKS]


def make(seed=0, **over):
    cfg = {**BASE, **over}
    if cfg["share_type"] == "add":  # add needs T_s = m
        cfg["num_shared_virtual_tokens"] = cfg["num_virtual_tokens"]
    torch.manual_seed(seed)
    return build_model(tiny_cfg(), OmegaConf.create(cfg), OmegaConf.create(ROUTER))


def combo(share, mask, **over):
    adaptive, subset = MASKS[mask]
    return make(share_type=share, apply_adaptive_mask=adaptive, apply_adaptive_subset_mask=subset, **over)


@pytest.mark.parametrize("placement", ["both", "decoder"])
def test_one_route_no_mask_no_sharing_is_exactly_prefix_tuning(placement):
    prefix = make_model({"name": "prefix", "num_virtual_tokens": 3, "placement": placement, "init_std": 1.0})
    routed = make(num_virtual_tokens=3, num_virtual_tokens_full=3, share_type="none", placement=placement,
                  apply_adaptive_mask=False, apply_adaptive_subset_mask=False)
    assert routed.method.router is None and routed.method.mask is None  # R = 1: nothing to route
    with torch.no_grad():
        routed.method.pool.copy_(prefix.method.prefix)
    batch = toy_batch(prefix.tokenizer)
    assert torch.equal(prefix(batch)[0], routed(batch)[0])
    prefix.eval(), routed.eval()
    assert torch.equal(prefix.score(batch)[0], routed.score(batch)[0])


@pytest.mark.parametrize("share,mask", COMBOS)
def test_exactly_the_intended_parameters_exist_and_learn(share, mask):
    model = combo(share, mask)
    adaptive, subset = MASKS[mask]
    want = ({"prefix"} if share != "only" else set()) | ({"shared_embedding"} if share != "none" else set())
    want |= {"mask"} if adaptive else set()
    want |= {"router"} if share != "only" or subset else set()
    groups = {k: v for k, v in model.method.param_groups().items() if v}
    assert set(groups) == want
    # honest counts: the trainable parameters are exactly these tensors, of these shapes
    w, s, t = 4 * 2 * 4 * 8, 3, {"only": 3, "add": 2, "prepend": 5, "none": 2}[share]  # W, T_s, T
    shapes = {"prefix": [(6, w)], "shared_embedding": [(s if share != "add" else 2, w)],
              "mask": [(3 if subset else 1, t, 4)], "router": [(3, 32)]}
    assert {k: [tuple(p.shape) for p in v] for k, v in groups.items()} == {k: shapes[k] for k in want}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(p.numel() for v in groups.values() for p in v)
    model(toy_batch(model.tokenizer))[0].backward()
    in_groups = {id(p) for v in groups.values() for p in v}
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in in_groups), n
    for name, params in groups.items():
        assert all(p.grad.abs().sum() > 0 for p in params), name


@pytest.mark.parametrize("share,mask", COMBOS)
def test_every_variant_learns_a_fixed_batch(share, mask):
    model = combo(share, mask)
    batch = toy_batch(model.tokenizer)
    losses = fit_batch(model, batch, lr=0.1, steps=20)  # routing noise (perturbation) is on, as in training
    assert losses[-1] < 0.5 * losses[0], losses


def test_forward_by_hand_routed_prefix_and_subset_gate():
    """share prepend, top-2, subset mask: site s gets [P_shared; sum_k w_k P_route[idx_k]] * sigmoid(sum_r p_r M_r)."""
    model = make(share_type="prepend", topk=2).eval()
    meth, batch = model.method, toy_batch(model.tokenizer)
    kw, aux = meth.prepare(batch, model.backbone)
    route = meth.route(batch, model.backbone)
    h, d, b = 4, 8, 3
    pool = meth.pool.view(3, 2, -1)
    routed = route.weights[:, 0, None, None] * pool[route.index[:, 0]] + route.weights[:, 1, None, None] * pool[route.index[:, 1]]
    table = torch.cat([meth.shared[None].expand(b, -1, -1), routed], 1)  # [B, 5, W]
    gate = torch.sigmoid(sum(route.probs[:, r, None, None] * meth.mask[r] for r in range(3)))  # [B, 5, S]
    for i, site in enumerate(meth.sites):
        block = table[:, :, i * 2 * h * d:(i + 1) * 2 * h * d].view(b, 5, 2, h, d) * gate[:, :, i, None, None, None]
        k, v = kw["mmpt_prefix"].kv[site]
        assert torch.allclose(k, block[:, :, 0].transpose(1, 2), atol=1e-6), site
        assert torch.allclose(v, block[:, :, 1].transpose(1, 2), atol=1e-6), site
    assert torch.allclose(aux["mask/gate"], gate.mean(1))


def test_closed_gate_silences_exactly_its_layer():
    model = make(apply_adaptive_subset_mask=False).eval()
    with torch.no_grad():
        model.method.mask[:, :, 1] = -1e4  # site 1 = encoder.1: gate 0
    kw, _ = model.method.prepare(toy_batch(model.tokenizer), model.backbone)
    for site, (k, v) in kw["mmpt_prefix"].kv.items():
        assert (k.abs().sum() == 0) == (site == "encoder.1") == (v.abs().sum() == 0), site


@pytest.mark.parametrize("over", [dict(perturb_router=True), dict(perturb_router=False, router_dropout=0.5),
                                  dict(perturb_router=False, router_dropout=0.0, gumbel=True)])
def test_router_noise_in_training_only(over):
    model = make(share_type="prepend", **over)
    batch = toy_batch(model.tokenizer, texts=("a b c", "the cat", "dogs bark loudly", "x y"), labels=(0, 1, 0, 1))
    train = [model.method.route(batch, model.backbone).probs for _ in range(2)]
    if over.get("gumbel"):  # the noise is in the pick, not in p
        torch.manual_seed(0)
        picks = {tuple(model.method.route(batch, model.backbone).index[:, 0].tolist()) for _ in range(30)}
        assert len(picks) > 1
    else:
        assert not torch.allclose(*train)
    model.eval()
    assert torch.equal(model.score(batch)[0], model.score(batch)[0])
    assert torch.equal(model(batch)[0], model(batch)[0])


def test_eval_stats_loads_sum_to_the_batch_and_name_the_sites():
    model = make().eval()
    batch = toy_batch(model.tokenizer)
    aux = [model.score(batch)[1], model.score(batch)[1]]
    counts = torch.bincount(torch.cat([a["router/index"][:, 0] for a in aux]), minlength=3)
    assert counts.sum() == 6  # two batches of 3
    stats = model.method.eval_stats(aux)
    assert sum(stats[f"router/load_{r}"] for r in range(3)) == pytest.approx(1.0)
    assert [stats[f"router/load_{r}"] for r in range(3)] == pytest.approx((counts / 6).tolist())
    assert 0 < stats["router/entropy"] <= math.log(3) and stats["router/max_load"] >= 1 / 3
    gate = aux[0]["mask/gate"].double().mean(0)
    assert [stats[f"mask/gate_mean_{s}"] for s in model.method.sites] == pytest.approx(gate.tolist())


def test_eval_stats_from_a_hand_made_aux():
    model = make(share_type="none")  # R = 3, subset mask
    aux = [{"router/probs": torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), "router/index": torch.tensor([[0], [0]]),
            "mask/gate": torch.tensor([[0.5, 1.0, 0.0, 0.25]] * 2)},
           {"router/probs": torch.tensor([[0.5, 0.5, 0.0]]), "router/index": torch.tensor([[1]]),
            "mask/gate": torch.tensor([[0.5, 0.0, 0.0, 1.0]])}]
    stats = model.method.eval_stats(aux)
    assert stats["router/load_0"] == pytest.approx(2 / 3) and stats["router/load_1"] == pytest.approx(1 / 3)
    assert stats["router/load_2"] == 0 and stats["router/max_load"] == pytest.approx(2 / 3)
    assert stats["router/entropy"] == pytest.approx(math.log(2) / 3)
    assert stats["mask/gate_mean_encoder.0"] == pytest.approx(0.5)
    assert stats["mask/gate_mean_encoder.1"] == pytest.approx(2 / 3)
    assert stats["mask/gate_mean_decoder.1"] == pytest.approx(0.5)


def test_mask_init_has_the_configured_statistics():
    model = make(num_virtual_tokens=1, num_virtual_tokens_full=16, num_shared_virtual_tokens=40)
    m = model.method.mask.detach()
    assert m.shape == (16, 40, 4)
    assert m.mean().item() == pytest.approx(2.5, abs=0.05) and m.std().item() == pytest.approx(0.5, abs=0.03)
    other = make(num_virtual_tokens=1, num_virtual_tokens_full=16, num_shared_virtual_tokens=40,
                 mask_init_mean=-1.0, mask_init_std=0.1).method.mask.detach()
    assert other.mean().item() == pytest.approx(-1.0, abs=0.02) and other.std().item() == pytest.approx(0.1, abs=0.01)


def test_mask_figure(tmp_path):
    model = make()
    out = draw(model.method.figures(), tmp_path)
    assert out == {"mask_gates": str(tmp_path / "mask_gates.png")}
    assert (tmp_path / "mask_gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert make(apply_adaptive_mask=False, apply_adaptive_subset_mask=False).method.figures() == {}


@pytest.mark.parametrize("over,key", [
    (dict(num_virtual_tokens=3, num_virtual_tokens_full=4), "method.num_virtual_tokens_full"),
    (dict(topk=4), "method.topk"),
    (dict(share_type="add", num_virtual_tokens=2, num_shared_virtual_tokens=3), "method.num_shared_virtual_tokens"),
    (dict(share_type="both"), "method.share_type"),
    (dict(apply_adaptive_mask=False, apply_adaptive_subset_mask=True), "method.apply_adaptive_subset_mask"),
    (dict(topk=2, gumbel=True), "method.gumbel"),
    (dict(placement="middle"), "method.placement"),
    (dict(mask_init_std=-0.5), "method.mask_init_std"),
    (dict(num_shared_virtual_tokens=0), "method.num_shared_virtual_tokens"),
])
def test_invalid_combinations_fail_at_construction_naming_the_key(over, key):
    cfg = {**BASE, **over}
    with pytest.raises(ConfigError) as err:
        build_model(tiny_cfg(), OmegaConf.create(cfg), OmegaConf.create(ROUTER))
    assert err.value.key == key


def test_share_none_ignores_the_shared_length():
    model = make(share_type="none", num_shared_virtual_tokens=None)
    assert model.method.shared is None and model.method.n_tokens == 2


@pytest.mark.subprocess
def test_cli_refuses_a_bad_combination_before_training(tmp_path):
    proc = run_cli(tmp_path, "model=t5_tiny", "method=prefix_routing", "dataset=cb",
                   "method.num_virtual_tokens=3", "method.num_virtual_tokens_full=4")
    assert proc.returncode == 2 and "method.num_virtual_tokens_full" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "metrics.json").exists()


@pytest.mark.subprocess
def test_cli_run_logs_routing_statistics_and_the_mask_picture(tmp_path):
    proc = run_cli(tmp_path, "model=t5_tiny", "method=prefix_routing", "dataset=cb", "trainer.max_steps=4",
                   "trainer.eval_every=2", "trainer.batch_size=8", "dataset.max_length=64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["test/acc"] <= 1 and metrics["test/router/max_load"] <= 1
    evals = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["event"] == "eval"]
    assert len(evals) == 2
    for row in evals:
        assert sum(row[f"val/router/load_{r}"] for r in range(4)) == pytest.approx(1.0)
        assert {"val/router/entropy", "val/router/max_load", "val/mask/gate_mean_encoder.0",
                "val/mask/gate_mean_decoder.1"} <= set(row)
    assert (tmp_path / "mask_gates.png").read_bytes()[:4] == b"\x89PNG"
