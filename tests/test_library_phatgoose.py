"""PhatGOOSE: gate training (gates.py) and routing (phatgoose.py), against a port of mttl's
PhatgooseSelector written here from its definition."""
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from conftest import compose_cfg, load_run
from mmpt.recipes import finetune
from mmpt.library import Library, LibraryError
from mmpt.library.__main__ import main as cli
from mmpt.library.extract import build
from mmpt.library.gates import GatedLoRA, GateOptions, library_gates, open_expert, train_gates
from mmpt.library.phatgoose import GATES, PhatgooseLinear
from test_library import files_of, fine, lib, make_run, runs  # noqa: F401  (fixtures)


def mttl_selector(x, prototypes, top_k=2, router_temp=-1.0):
    """mttl's PerTokenSelector.forward with PhatgooseSelectorConfig (norm_d on input and
    prototypes, router_temp -1 = sqrt(d), top-k renormalised): (experts [.., k], weights [.., k])."""
    d = x.shape[-1]
    temp = router_temp if router_temp > 0 else np.sqrt(d)
    norm = nn.LayerNorm(d, elementwise_affine=False)
    logits = F.linear(norm(x.float()), norm(prototypes.float())) / temp
    top, experts = torch.topk(logits, top_k, dim=-1)
    return experts, F.softmax(top, dim=-1)


def hand_layer(E=4, d_in=6, d_out=5, r=2, top_k=2, temp=-1.0):
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    A, B = torch.randn(E, r, d_in), torch.randn(E, d_out, r)
    gates = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.3, 1.0], [-0.2, 0.4, 0.1, 1.5, -2.0, 0.0],
                          [1.0, 1.0, -1.0, -1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0, 0.0, -3.0]])[:E]
    return PhatgooseLinear(base, A, B, gates, top_k, temp), A, B, gates


@pytest.mark.parametrize("top_k, temp", [(2, -1.0), (1, -1.0), (3, 0.5)])
def test_routing_equals_mttls_selector(top_k, temp):
    layer, A, B, gates = hand_layer(top_k=top_k, temp=temp)
    x = torch.randn(2, 3, 6) * 3 + 1
    experts, probs = mttl_selector(x, gates, top_k, temp)
    w = layer.mix(x)
    assert torch.allclose(w.gather(-1, experts), probs, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3), atol=1e-6) and ((w > 0).sum(-1) == top_k).all()
    # the layer's output: W x + sum over the kept experts of p_e B_e A_e x
    want = layer.base(x) + sum(probs[..., j, None] * torch.einsum("eor,eri,...i->...eo", B, A, x).gather(
        -2, experts[..., j, None, None].expand(-1, -1, 1, 5)).squeeze(-2) for j in range(top_k))
    assert torch.allclose(layer(x), want, atol=1e-5)


def test_the_layer_norms_and_the_sqrt_d_matter():
    """The hand-built case tells the port's steps apart (a layer without them would not match)."""
    layer, _, _, gates = hand_layer()
    x = torch.randn(4, 6) * 3 + 1
    _, with_norm = mttl_selector(x, gates)
    raw = (x @ gates.T).topk(2, -1).values.softmax(-1)
    no_sqrt = (F.layer_norm(x, (6,)) @ F.layer_norm(gates, (6,)).T).topk(2, -1).values.softmax(-1)
    assert not torch.allclose(with_norm, raw, atol=1e-3) and not torch.allclose(with_norm, no_sqrt, atol=1e-3)


def test_a_gated_lora_scales_the_experts_output_by_sigmoid_x_dot_v(runs):  # noqa: F811
    _, model = load_run(runs["cb"])
    name, lora = next((n, m) for n, m in model.backbone.named_modules() if hasattr(m, "lora_A"))
    gated = GatedLoRA(lora)
    x = torch.randn(3, lora.lora_A.shape[1])
    delta = lora(x) - lora.base(x)
    assert torch.allclose(gated(x), lora.base(x) + 0.5 * delta, atol=1e-6)  # v = 0: sigmoid 0.5
    with torch.no_grad():
        gated.v.copy_(torch.randn_like(gated.v))
    assert torch.allclose(gated(x), lora.base(x) + torch.sigmoid(x @ gated.v.T) * delta, atol=1e-6)


def test_gate_training_trains_only_the_gates(lib):  # noqa: F811
    row = lib.experts[0]
    model, data = open_expert(lib, row, GateOptions(batch_size=4))
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    gates = train_gates(model, data, lib.compat["targets"], GateOptions(steps=3, lr=0.1))
    assert gates.pop("loss") > 0 and set(gates) == set(lib.compat["targets"])
    assert all(v.abs().sum() > 0 for v in gates.values())  # they moved off zero
    after = {k: v for k, v in model.state_dict().items() if not k.endswith(".v")}
    renamed = {k.replace(".lora.", "."): v for k, v in after.items()}  # GatedLoRA holds the LoRA layer as `.lora`
    assert renamed.keys() == frozen.keys() and all(torch.equal(renamed[k], frozen[k]) for k in frozen)


def test_gates_go_into_the_library_cache_and_phatgoose_routes_with_them(runs, tmp_path, capsys):  # noqa: F811
    lib = Library(build(tmp_path / "lib", [runs["sweep"]]))
    experts = files_of(lib.path / "experts")
    assert cli(["gates", str(lib.path), "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert "trained PhatGOOSE gates of 2 experts" in out
    assert "phatgoose gates: 1/2" in err and "expert=cb" in err and "2/2" in err  # progress per expert
    gates = lib.stored(GATES)
    assert set(gates) == set(lib.compat["targets"]) and all(g.shape[0] == 2 for g in gates.values())
    assert files_of(lib.path / "experts") == experts  # the experts themselves unchanged
    model, chosen = fine(lib, "phatgoose")
    assert chosen == {}
    layers = {n: m for n, m in model.backbone.named_modules() if isinstance(m, PhatgooseLinear)}
    assert set(layers) == set(lib.compat["targets"]) and layers[lib.compat["targets"][0]].top_k == 2
    assert all(torch.equal(m.keys, gates[n]) for n, m in layers.items())


def test_gates_for_an_expert_whose_run_is_gone_are_refused_naming_it(runs, tmp_path, capsys):  # noqa: F811
    run = make_run(tmp_path / "gone", dataset="rte")
    lib = Library(build(tmp_path / "lib", [runs["cb"], run]))
    shutil.rmtree(run)
    assert cli(["gates", str(lib.path), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expert `rte`" in err and "is gone" in err
    assert not (lib.path / "cache").exists()  # nothing written


def test_gates_for_an_expert_whose_task_data_is_gone_are_refused_naming_it(runs, tmp_path, capsys):  # noqa: F811
    run = make_run(tmp_path / "nodata", dataset="rte")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.paths.data_dir = str(tmp_path / "nothing")  # the task's data is gone
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    lib = Library(build(tmp_path / "lib", [runs["cb"], run]))
    assert cli(["gates", str(lib.path), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expert `rte`" in err and "task data" in err
    assert not (lib.path / "cache").exists()


def test_phatgoose_without_gates_is_one_line_before_the_run_dir(runs, tmp_path):  # noqa: F811
    lib = Library(build(tmp_path / "lib", [runs["cb"]]))
    with pytest.raises(LibraryError, match="python -m mmpt.library gates"):
        fine(lib, "phatgoose")
    cfg = compose_cfg([f"library={lib.path}", "dataset=cb", "finetune_type=phatgoose"], config_name="finetune",
                      run_dir=tmp_path / "run")
    with pytest.raises(LibraryError, match="no PhatGOOSE gates"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()
