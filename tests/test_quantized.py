"""Quantized frozen backbones (model.quantization=nf4|fp4|int8, bitsandbytes' CPU backend) on
llama_tiny and t5_tiny: fresh adapters change nothing, the loss drops, gradients reach exactly the
method's groups, resume is exact; PEFT round trip, merged export, fine-tuning, libraries; bad
input is one line before training."""
import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import DATA, ROOT, compose_cfg, fit_batch, toy_batch
from mmpt.errors import ConfigError
from mmpt.data.mixture import tasks_of as head_tasks
from mmpt.models import build_model, load_backbone, quantize

bnb = pytest.importorskip("bitsandbytes")  # installed by scripts/install.sh (extra `quant`)


def built(model: str, method: str, kind: str, *over):
    cfg = compose_cfg([f"model={model}", f"method={method}", f"model.quantization={kind}", *over])
    with open_dict(cfg):
        if "dropout" in cfg.method:
            cfg.method.dropout = 0.0
        cfg.model.dropout = 0.0
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, cfg.method, cfg.get("router"), tasks=head_tasks(cfg.dataset))


def routing(m, batch):
    ctx = getattr(m.method, "routing", None)
    return ctx(batch, 1) if ctx else nullcontext()


def logits(backbone, batch, causal: bool):
    if not backbone.config.is_encoder_decoder and not hasattr(backbone, "lm_head"):  # an encoder
        return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if causal:
        return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["labels"].clamp(min=0)).logits


QUANT = {"nf4": bnb.nn.Linear4bit, "fp4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}


@pytest.mark.parametrize("model,kind", [("llama_tiny", "nf4"), ("t5_tiny", "int8"), ("llama_tiny", "fp4"),
                                        ("bert", "nf4")])
@pytest.mark.parametrize("method", ["lora", "ia3", "poly_lora"])
def test_fresh_adapters_on_quantized_layers_give_exactly_the_quantized_base(model, kind, method, tiny_bert_dir):
    if model == "bert":  # a BERT-family encoder loaded from a directory, as model=local loads any
        cfg, m = built("local", method, kind, f"model.name_or_path={tiny_bert_dir}")
    else:
        cfg, m = built(model, method, kind)
    wrapped = list(m.method._layers.values() if isinstance(m.method._layers, dict) else m.method._layers)
    assert wrapped and all(isinstance(w.base, QUANT[kind]) for w in wrapped)  # the quantized layers are adapted
    assert all(p.dtype == torch.float32 for ps in m.param_groups().values() for p in ps)
    base, tok = load_backbone(cfg.model)  # the same quantized backbone, nothing wrapped
    batch, causal = toy_batch(tok), model == "llama_tiny"
    m.eval()
    base.eval()
    with torch.no_grad(), routing(m, batch):
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


@pytest.mark.subprocess
@pytest.mark.parametrize("over, message", [
    (["model.quantization=int4"], "error: config error at `model.quantization`: expected one of "
                                  "['none', 'nf4', 'fp4', 'int8'], got 'int4'"),
    (["model.double_quant=true"], "error: config error at `model.double_quant`: applies to 4-bit backbones"),
    (["model.quantization=nf4", "method=full"], "error: config error at `method`: full trains the backbone's weights"),
    (["trainer.strategy=zero3"], "error: config error at `trainer.strategy`: expected one of ['ddp', 'fsdp']"),
], ids=["quantization", "double_quant", "full-on-nf4", "strategy"])
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, over, message):
    env = {"MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "train.py", "model=llama_tiny", "method=lora", *over, "dataset=cb",
                          f"hydra.run.dir={tmp_path / 'run' / 'sub'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert not (tmp_path / "run").exists()  # no run dir, no .hydra/, no train.log


def test_an_in_process_4bit_backbone_keeps_its_float_layers_in_float32():
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / "llama_tiny.yaml"), {"quantization": "nf4"})
    nf4, _ = load_backbone(cfg)
    floats = {n: p.dtype for n, p in nf4.named_parameters() if p.is_floating_point()}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(floats)
    assert any(".input_layernorm." in n for n in floats)
    assert set(floats.values()) == {torch.float32}, {n: d for n, d in floats.items() if d != torch.float32}
    assert isinstance(nf4.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)


# -- whole runs: resume, PEFT, merged, fine-tuning, libraries --
Q4 = ["model=llama_tiny", "model.quantization=nf4", "method=lora", "dataset=cb", "dataset.max_length=64",
      "k_shot=32", "trainer.batch_size=8", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.log_every=1",
      "optimizer.groups.adapters.lr=3e-2", "seed=4"]


def run(out, *args, config_name="train"):
    """train() / finetune() as the scripts run them, with the config Hydra saves in the run dir."""
    from mmpt.recipes import train
    from mmpt.recipes import finetune

    cfg = compose_cfg(list(args), config_name=config_name, run_dir=out)
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return (finetune if config_name == "finetune" else train)(cfg)


@pytest.fixture(scope="module")
def q4_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("q4") / "run"
    run(out, *Q4)
    return out


# t5_tiny: 8-bit, prefix routing with its router noise and dropout 0.1 (llama_tiny: LoRA dropout)
T5_I8 = ["model=t5_tiny", "model.quantization=int8", "method=prefix_routing"] + Q4[3:]


@pytest.mark.parametrize("args", [Q4, T5_I8], ids=["llama_tiny-nf4-lora", "t5_tiny-int8-prefix_routing"])
def test_a_killed_quantized_run_resumes_exactly(tmp_path, args):
    from test_resume import assert_same_run, run as script  # real train.py processes, SIGKILLed mid-run

    args = [a for a in args if not a.startswith(("trainer.eval_every", "optimizer.groups"))] + ["trainer.eval_every=2"]
    script("train.py", tmp_path / "full", args)
    script("train.py", tmp_path / "cut", args, kill_at="step:4")
    script("train.py", tmp_path / "cut", args, resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_a_4bit_lora_export_runs_in_peft_on_the_same_4bit_base_and_imports_back(q4_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmpt.export.__main__ import export
    from conftest import load_run

    out = export(q4_run, "peft", tmp_path / "peft")
    cfg, model = load_run(q4_run)
    # the float base beside the adapter, loaded the way the run loaded its backbone
    base = AutoModelForCausalLM.from_pretrained(out / "base_model", **quantize.load_kwargs(cfg.model))
    theirs = PeftModel.from_pretrained(quantize.settle(base), out).eval()
    q_proj = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    ids = torch.randint(1000, 5000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = model.backbone(input_ids=ids).logits
        peft_logits = theirs(input_ids=ids).logits
    trained = model.method._layers[0].lora_B.abs().max()
    assert trained > 0 and torch.allclose(mine, peft_logits, atol=1e-5), (mine - peft_logits).abs().max()
    back = tmp_path / "back"
    run(back, *Q4, f"init_from=peft:{out}", "trainer.max_steps=0")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (q4_run, back))
    tests = {k: v for k, v in a.items() if k.startswith("test/")}
    assert tests and {k: b[k] for k in tests} == tests
    assert (q4_run / "predictions" / "test.jsonl").read_text() == (back / "predictions" / "test.jsonl").read_text()
    # a base whose float weights would quantize to other 4-bit weights is refused
    import shutil

    from safetensors.torch import load_file, save_file

    from mmpt.export.importer import check_base

    other = shutil.copytree(out, tmp_path / "other")
    weights = load_file(other / "base_model" / "model.safetensors")
    weights["model.layers.1.self_attn.v_proj.weight"][3] += 0.05
    save_file(weights, other / "base_model" / "model.safetensors")
    with pytest.raises(ConfigError, match=r"differs from this run's model \(first at `model.layers.1.self_attn.v_proj.weight`"):
        check_base(json.loads((other / "adapter_config.json").read_text()), other, cfg.model, model.backbone)


def test_a_peft_export_of_an_in_process_backbone_loads_from_another_directory(q4_run, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from mmpt.export.__main__ import export

    out = export(q4_run, "peft", tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base_model").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # PEFT resolves the base's name against the current directory
    theirs = AutoPeftModelForCausalLM.from_pretrained(str(out))
    from safetensors.torch import load_file

    saved = load_file(out / "base_model" / "model.safetensors")
    embed = theirs.get_base_model().model.embed_tokens.weight
    assert torch.equal(embed.detach(), saved["model.embed_tokens.weight"])


def test_merged_export_of_a_4bit_run_is_its_dequantized_float_model(q4_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from mmpt.export.__main__ import export
    from conftest import load_run

    out = export(q4_run, "merged", tmp_path / "merged")
    net = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    _, model = load_run(q4_run)
    ids = torch.randint(1000, 5000, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net(input_ids=ids).logits, model.backbone(input_ids=ids).logits, atol=1e-5)


def test_finetune_from_a_quantized_pretraining_run(q4_run, tmp_path):
    over = [f"pretrained={q4_run}", "dataset=rte", "dataset.max_length=64", "k_shot=16", "trainer.max_steps=2",
            "trainer.eval_every=2"]
    m = run(tmp_path / "A", *over, "finetune_type=A", config_name="finetune")
    assert "test/acc" in m and m["backbone_mb"] > 0
    f = run(tmp_path / "F", *over, "finetune_type=F", config_name="finetune")
    # F trains what can train: the adapters and the backbone's float weights, not its 4-bit ones
    base, _ = load_backbone(OmegaConf.merge(OmegaConf.load(q4_run / ".hydra" / "config.yaml").model, {}))
    floats = sum(p.numel() for p in base.parameters() if p.is_floating_point())
    assert f["trainable_params"] == floats + m["trainable_params"]


def test_a_library_takes_experts_of_a_4bit_backbone_and_of_its_float_source(q4_run, tmp_path):
    from mmpt.engine import checkpoint
    from mmpt.library import Library, LibraryError
    from mmpt.library.extract import build

    def float_run(path, *over):
        cfg = compose_cfg([a for a in Q4 if "quantization" not in a] + ["dataset=rte", *over], run_dir=path)
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.method, cfg.get("router"))
        (path / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
        checkpoint.save(path / "checkpoints" / "best", model, {"method": "lora"})
        return path

    lib = Library(build(tmp_path / "lib", [q4_run, float_run(tmp_path / "f32")]))
    assert sorted(lib.names) == ["cb", "rte"]
    with pytest.raises(LibraryError, match="init_seed"):
        build(tmp_path / "lib2", [q4_run, float_run(tmp_path / "other", "model.init_seed=1")])
