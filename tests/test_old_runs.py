"""Run folders written before issue 31 (tests/fixtures/README.md: their config holds the model
YAML's `targets` block and `method.target_modules: ${model.targets.lora}`) still resume, report
and export with today's code, to the same numbers."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from conftest import DATA, ROOT, compose_cfg
from mmpt.export.__main__ import export
from mmpt.report.__main__ import main as report
from mmpt.report.runs import identity
from mmpt.runs import load_model, open_run
from test_resume import ENV, assert_same_run

FIXTURES = ROOT / "tests" / "fixtures"
ARGS = ["model=t5_tiny", "method=lora", "dataset=cb", "method.rank=2", "dataset.max_length=64", "trainer.max_steps=4",
        "trainer.eval_every=2", "trainer.log_every=1", "trainer.batch_size=4", "k_shot=16", "seed=0"]
# the trained modules: q and v of every attention (T5's LoRA set), 2 layers x (encoder self; decoder self, cross)
QV = {f"{stack}.block.{i}.layer.{j}.{kind}.{p}" for stack, layers in (("encoder", [0]), ("decoder", [0, 1]))
      for i in range(2) for j in layers for kind in (["SelfAttention"] if j == 0 else ["EncDecAttention"])
      for p in ("q", "v")}


@pytest.fixture
def old_run(tmp_path):
    """A copy of the finished old run (a test never writes into tests/fixtures)."""
    shutil.copytree(FIXTURES / "old_lora_run", tmp_path / "old")
    return tmp_path / "old"


def test_the_fixture_is_an_old_run():
    cfg = yaml.safe_load((FIXTURES / "old_lora_run" / ".hydra" / "config.yaml").read_text())
    assert cfg["method"]["target_modules"] == "${model.targets.lora}"
    assert cfg["model"]["targets"]["lora"] == r".*(SelfAttention|EncDecAttention)\.(q|v)"


def test_an_old_run_has_the_identity_of_the_same_command_today(old_run):
    """What resume's config check and the report's grouping compare: equal, so the report averages
    an old and a new seed of one setting and resume=true accepts today's command."""
    new = OmegaConf.to_container(compose_cfg(ARGS), resolve=False)
    old = yaml.safe_load((old_run / ".hydra" / "config.yaml").read_text())
    assert new["method"]["target_modules"] == "lora" and "targets" not in new["model"]
    assert identity(old) == identity(new)


def test_an_old_run_resumes_to_the_numbers_of_its_uninterrupted_run(tmp_path):
    """The old run killed after step 2, resumed by today's train.py, finishes as the old code's
    uninterrupted run did: every loss and val line, test metrics, predictions and best weights."""
    cut = tmp_path / "cut"
    shutil.copytree(FIXTURES / "old_lora_killed", cut)
    out = subprocess.run([sys.executable, "train.py", *ARGS, f"hydra.run.dir={cut}", "resume=true"], cwd=ROOT,
                         env={**ENV, "MMPT_DATA_DIR": str(DATA)}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    full = FIXTURES / "old_lora_run"
    assert_same_run(full, cut)
    for split in ("val", "test"):
        assert (cut / "predictions" / f"{split}.jsonl").read_text() == (full / "predictions" / f"{split}.jsonl").read_text()
    a, b = (load_file(d / "checkpoints" / "best" / "trainable.safetensors") for d in (full, cut))
    assert set(a) == set(b) and {k.removeprefix("backbone.").rsplit(".lora_", 1)[0] for k in a} == QV
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_old_run_reports_its_numbers(old_run, tmp_path):
    assert report([str(old_run), "--out", str(tmp_path / "report")]) == 0
    row = next(r for r in (tmp_path / "report" / "report.csv").read_text().splitlines()[1:] if ",cb,acc," in r)
    metrics = json.loads((old_run / "metrics.json").read_text())
    fields = dict(zip((tmp_path / "report" / "report.csv").read_text().splitlines()[0].split(","), row.split(",")))
    assert float(fields["mean"]) == pytest.approx(100 * metrics["test/acc"])
    assert float(fields["val_mean"]) == pytest.approx(100 * metrics["val/acc"])


def test_an_old_run_exports_a_merged_model_with_the_runs_logits(old_run, tmp_path):
    """Its explicit regex (the config's model.targets.lora) rebuilds the run's LoRA layers; the
    merged export computes what the run's model computes."""
    run = open_run(old_run, "export")
    model = load_model(run)
    assert set(model.method.layers) == QV
    export(old_run, "merged", tmp_path / "merged")
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    dec = torch.randint(5, 1000, (3, 4))
    with torch.no_grad():
        ours = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        theirs = merged(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    # B moved from 0 in training, so the adapters change the logits (the check is not vacuous)
    assert any(m.lora_B.abs().max() > 0 for m in model.method.layers.values())
    assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, ours.abs().max().item())
