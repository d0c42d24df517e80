"""Quantized frozen backbones (model.quantization=nf4|fp4|int8, bitsandbytes' CPU backend) on
llama_tiny and t5_tiny: fresh adapters change nothing, the loss drops, gradients reach exactly the
method's groups, resume is exact; PEFT round trip, merged export, fine-tuning, libraries; bad
input is one line before training."""
import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import DATA, ROOT, compose_cfg, fit_batch, toy_batch
from mmpt.errors import ConfigError
from mmpt.models import build_model, load_backbone, quantize

bnb = pytest.importorskip("bitsandbytes")  # installed by scripts/install.sh (extra `quant`)


def built(model: str, method: str, kind: str, *over):
    cfg = compose_cfg([f"model={model}", f"method={method}", f"model.quantization={kind}", *over])
    with open_dict(cfg):
        if "dropout" in cfg.method:
            cfg.method.dropout = 0.0
        cfg.model.dropout = 0.0
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, cfg.method, cfg.get("router"))


def logits(backbone, batch, causal: bool):
    if causal:
        return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["labels"].clamp(min=0)).logits


QUANT = {"nf4": bnb.nn.Linear4bit, "fp4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}


@pytest.mark.parametrize("model,kind", [("llama_tiny", "nf4"), ("t5_tiny", "int8"), ("llama_tiny", "fp4")])
@pytest.mark.parametrize("method", ["lora", "ia3", "poly_lora"])
def test_fresh_adapters_on_quantized_layers_give_exactly_the_quantized_base(model, kind, method):
    cfg, m = built(model, method, kind)
    wrapped = list(m.method._layers.values() if isinstance(m.method._layers, dict) else m.method._layers)
    assert wrapped and all(isinstance(w.base, QUANT[kind]) for w in wrapped)  # the quantized layers are adapted
    assert all(p.dtype == torch.float32 for ps in m.param_groups().values() for p in ps)
    base, tok = load_backbone(cfg.model)  # the same quantized backbone, nothing wrapped
    batch, causal = toy_batch(tok), model == "llama_tiny"
    m.eval()
    base.eval()
    with torch.no_grad(), m._routing(batch):
        ours = logits(m.backbone, batch, causal)
    with torch.no_grad():
        theirs = logits(base, batch, causal)
    assert torch.equal(ours, theirs)
    assert not torch.equal(theirs, logits(load_backbone(OmegaConf.merge(cfg.model, {"quantization": "none"}))[0].eval(),
                                          batch, causal).detach())  # the base is really quantized


@pytest.mark.parametrize("model,kind,method", [
    ("llama_tiny", "nf4", "lora"), ("llama_tiny", "nf4", "prefix_routing"), ("llama_tiny", "nf4", "prompt_tuning"),
    ("llama_tiny", "int8", "poly_lora"), ("t5_tiny", "int8", "prefix_routing"), ("t5_tiny", "nf4", "ia3"),
    ("t5_tiny", "nf4", "prompt_routing"), ("t5_tiny", "int8", "prefix")])
def test_every_method_trains_on_a_quantized_backbone_with_gradients_in_exactly_its_groups(model, kind, method):
    _, m = built(model, method, kind)
    batch = toy_batch(m.tokenizer)
    groups = {id(p) for ps in m.param_groups().values() for p in ps}
    loss, _ = m(batch)
    loss.backward()
    got = {id(p) for p in m.parameters() if p.grad is not None}
    assert got == groups and got
    assert all(p.grad is None and not p.requires_grad for p in m.backbone.parameters() if id(p) not in groups)
    assert any(quantize.is_quantized_param(p) for p in m.backbone.parameters())
    m.zero_grad()
    losses = fit_batch(m, batch, lr=3e-2, steps=8)
    assert losses[-1] < losses[0] - 0.05, losses


def test_bad_quantization_settings_are_one_line_errors_before_loading(monkeypatch):
    t5 = OmegaConf.load(ROOT / "conf" / "model" / "t5_tiny.yaml")
    for over, key in [({"quantization": "nf5"}, "model.quantization"),
                      ({"quantization": "int8", "double_quant": True}, "model.double_quant"),
                      ({"quantization": "none", "compute_dtype": "bfloat16"}, "model.compute_dtype"),
                      ({"quantization": "nf4", "compute_dtype": "float8"}, "model.compute_dtype")]:
        with pytest.raises(ConfigError) as e:
            load_backbone(OmegaConf.merge(t5, over))
        assert e.value.key == key and "\n" not in str(e.value)
    full = OmegaConf.create({"name": "full"})
    monkeypatch.setattr("mmpt.models.load_backbone", lambda cfg: pytest.fail("loaded before refusing"))
    with pytest.raises(ConfigError, match="full trains the backbone's weights, which a nf4 backbone holds"):
        build_model(OmegaConf.merge(t5, {"quantization": "nf4"}), full)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"bitsandbytes package, which is not installed: pip install"):
        quantize.bnb_config(OmegaConf.create({"quantization": "int8"}))


def test_cli_refuses_an_unknown_quantization_in_one_line(tmp_path):
    env = {"MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "train.py", "model=llama_tiny", "model.quantization=int4", "method=lora",
                          "dataset=cb", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: config error at `model.quantization`: expected one of "
                                               "['none', 'nf4', 'fp4', 'int8'], got 'int4'"]
    assert not (tmp_path / "run" / "metrics.json").exists()
