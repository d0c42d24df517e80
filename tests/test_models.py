"""Backbones: the from_pretrained path on a local directory, the offline error, W&B logging."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, make_model, tiny_cfg, toy_batch
from mmpt.errors import ConfigError, MMPTError
from mmpt.recipes import train
from mmpt.models import build_model
from mmpt.models.backbone import load_backbone


def test_local_directory_loads_through_from_pretrained(tmp_path):
    """model=local uses the same path as hub names; a saved tiny T5 comes back identical."""
    backbone, tokenizer = load_backbone(tiny_cfg())
    backbone.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    local = build_model(OmegaConf.create({"build": "local", "name_or_path": str(tmp_path), "tokenizer": None}),
                        OmegaConf.create({"name": "full"})).eval()
    ref = make_model("full").eval()
    batch = toy_batch(ref.tokenizer)
    assert torch.equal(local.score(batch)[0], ref.score(batch)[0])


def test_local_without_a_directory_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_backbone(OmegaConf.create({"build": "local", "name_or_path": str(tmp_path / "nope"), "tokenizer": None}))


def test_hub_name_offline_says_what_to_use_instead(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMPTError, match="cannot be downloaded.*model=t5_tiny"):
        load_backbone(OmegaConf.create({"build": "pretrained", "name_or_path": "google-t5/t5-small", "tokenizer": None}))


def test_wandb_offline_run_logs_metrics_and_keeps_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_cfg(["model=t5_tiny", "method=prefix", "dataset=cb", "logger=wandb", "logger.mode=offline",
                       "trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1", "dataset.max_length=32"], run_dir=tmp_path)
    metrics = train(cfg)
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, "no offline W&B run directory"
    records = next(runs[0].glob("*.wandb")).read_bytes()  # the offline run's record stream
    assert b"test/acc" in records and b"val/acc" in records and b"train/loss" in records
    assert "test/acc" in metrics
    for f in tmp_path.rglob("*"):  # the key is in no saved config, log or record
        if f.is_file():
            assert b"0123456789abcdef" not in f.read_bytes(), f


def test_generate_mode_reports_invalid_rate(tmp_path):
    cfg = compose_cfg(["model=t5_tiny", "method=prefix", "dataset=cb", "trainer.eval_mode=generate",
                       "trainer.max_steps=1", "trainer.eval_every=1", "dataset.max_length=32",
                       "trainer.max_new_tokens=3"], run_dir=tmp_path)
    metrics = train(cfg)
    # an untrained tiny model emits no label: every output is invalid, and invalid counts as wrong
    assert metrics["test/invalid_rate"] == pytest.approx(1.0)
    assert metrics["test/acc"] == 0.0
    rows = [json.loads(l) for l in open(tmp_path / "predictions" / "test.jsonl")]
    assert all(r["prediction"] is None for r in rows)


# -- adapter targets: the family's sets, named by method.target_modules --
LORA = {"name": "lora", "rank": 2, "alpha": 4, "dropout": 0.0}


def adapted(model_cfg: dict, target) -> set:
    """The Linear names a LoRA with `target_modules: target` adapts, the method config a child of a
    run config holding `model_cfg` (as a run's `method` node is)."""
    cfg = OmegaConf.create({"model": model_cfg, "method": {**LORA, "target_modules": target}})
    layers = build_model(cfg.model, cfg.method).method.layers
    return {n.rsplit(".", 1)[-1] for n in layers}, len(layers)


def test_target_modules_names_a_set_of_the_backbones_family():
    t5 = tiny_cfg()
    assert adapted(t5, "lora") == ({"q", "v"}, 12)          # 2 x (encoder self; decoder self, cross) x q, v
    assert adapted(t5, "poly_ffn")[0] == {"q", "k", "v", "o", "wi", "wo"}
    llama = {"build": "llama_tiny", "name_or_path": None, "tokenizer": None, "d_model": 32, "d_ff": 64,
             "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 64}
    assert adapted(llama, "lora") == ({"q_proj", "v_proj"}, 4)
    assert adapted(llama, "ia3")[0] == {"k_proj", "v_proj", "up_proj"}
    assert adapted(t5, r".*SelfAttention\.o") == ({"o"}, 4)   # a regex of the user's own: 2 x encoder, decoder


def test_the_old_spelling_reads_an_old_runs_regex_or_else_the_familys_set():
    """`${model.targets.<set>}`: an old run folder's config still has the block, with explicit
    regexes (here one the family does not have); a command line without it gets the family's set."""
    old = {**tiny_cfg(), "targets": {"lora": r".*SelfAttention\.k"}}
    assert adapted(old, "${model.targets.lora}") == ({"k"}, 4)
    assert adapted({**tiny_cfg(), "targets": {"lora": None}}, "${model.targets.lora}") == ({"q", "v"}, 12)
    assert adapted(tiny_cfg(), "${model.targets.poly_ffn}")[0] == {"q", "k", "v", "o", "wi", "wo"}


def test_an_unknown_set_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"method\.target_modules.*'nothing' matches no Linear"):
        adapted(tiny_cfg(), "nothing")
