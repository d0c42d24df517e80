"""Bad input that used to fail late or with a raw traceback: one line naming the key or file,
before any training; and `model=local` on a BERT-family directory."""
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertModel

from conftest import DATA, ROOT, compose_cfg
from mmpt.engine import checkpoint
from mmpt.errors import CheckpointError, ConfigError
from mmpt.recipes import train
from mmpt.models.backbone import load_backbone, load_tokenizer, minilm_dir


def run_cli(run_dir, *args):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line(proc, run_dir, key):
    """Exit status 2, one `error:` line naming `key` on stderr, no traceback, nothing trained."""
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"`{key}`" in lines[0], proc.stderr[-1500:]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.subprocess
def test_generate_on_an_encoder_is_refused_before_training(tmp_path):
    proc = run_cli(tmp_path, "model=minilm", "method=lora", "dataset=cb", "trainer.eval_mode=generate",
                   "trainer.max_steps=28", "trainer.eval_every=28")
    assert_one_line(proc, tmp_path, "trainer.eval_mode")
    assert "rank" in proc.stderr and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.subprocess
def test_model_local_without_a_path_names_the_key(tmp_path):
    proc = run_cli(tmp_path, "model=local", "method=lora", "dataset=cb")
    assert_one_line(proc, tmp_path, "model.name_or_path")


def local_cfg(path, tokenizer=None):
    return OmegaConf.create({"build": "local", "name_or_path": str(path), "tokenizer": tokenizer})


def test_a_folder_that_is_not_a_model_names_the_key(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(ConfigError, match=r"model\.name_or_path.*no config\.json"):
        load_backbone(local_cfg(tmp_path))


def tiny_bert(path, with_tokenizer=True):
    """A 2-layer BERT with MiniLM's vocabulary, saved like any checkpoint."""
    tok = load_tokenizer(minilm_dir())
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    if with_tokenizer:
        tok.save_pretrained(path)
    return path


def test_a_model_folder_without_a_tokenizer_names_the_key(tmp_path):
    tiny_bert(tmp_path, with_tokenizer=False)
    with pytest.raises(ConfigError, match=r"`model\.tokenizer`: no tokenizer in"):
        load_backbone(local_cfg(tmp_path))
    model, _ = load_backbone(local_cfg(tmp_path, tokenizer=minilm_dir()))  # a tokenizer from elsewhere
    assert model.config.model_type == "bert"


@pytest.mark.subprocess
def test_a_truncated_weights_file_of_a_local_model_is_one_line_naming_it(tmp_path):
    weights = tiny_bert(tmp_path / "bert") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    run_dir = tmp_path / "run"
    proc = run_cli(run_dir, "model=local", f"model.name_or_path={tmp_path / 'bert'}", "method=lora", "dataset=cb")
    assert_one_line(proc, run_dir, "model.name_or_path")
    assert f"{weights}: cannot read the model weights" in proc.stderr


def test_an_unknown_mixture_task_blames_dataset_tasks(tmp_path):
    cfg = compose_cfg(["model=t5_tiny", "method=lora", "dataset=glue_mix", "dataset.tasks=[cola,foo]"],
                      run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"`dataset\.tasks`: unknown task 'foo'"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("content", [b"\x80\x02garbage that is no pickle", b"PK\x03\x04truncated zip"])
def test_a_corrupt_training_state_names_the_file(tmp_path, content):
    (tmp_path / checkpoint.STATE).write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / checkpoint.STATE}: cannot read the training state"):
        checkpoint.load_state(tmp_path)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_model_local_on_a_bert_folder_trains(tmp_path, method):
    """model=local: the adapter targets are the loaded family's: BERT names here."""
    path = tiny_bert(tmp_path / "bert")
    cfg = compose_cfg(["model=local", f"model.name_or_path={path}", f"method={method}", "dataset=cb",
                       "dataset.max_length=32", "trainer.max_steps=2", "trainer.batch_size=4"], run_dir=tmp_path / "run")
    metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1 and metrics["trainable_params"] > 0
    if method == "lora":
        assert cfg.method.target_modules == "lora"  # the family's set of that name
        names = checkpoint.read_meta(tmp_path / "run" / "checkpoints" / "best")["params"]
        lora = [n for n in names if not n.startswith("heads.")]
        # A and B for query and value in each of the 2 layers
        assert len(lora) == 8 and all(".attention.self.query." in n or ".attention.self.value." in n for n in lora)
