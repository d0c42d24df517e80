"""A run SIGKILLed in its own process and resumed equals the uninterrupted run, bitwise on CPU.

Every run is a real `train.py` / `finetune.py` subprocess. MMPT_TEST_KILL_AT="<event>:<step>"
(mmpt.engine.checkpoint.kill_point) makes a run SIGKILL itself at an exact point: `step:N` after
step N's log, eval and checkpoint; `last-files:N`, `last-swap:N`, `last-clean:N` inside the save
of checkpoints/last at step N (files half written; the previous checkpoint moved to last.old and
the new one not yet in place; both in place, last.old not yet removed). Dropout is on (t5_tiny's
0.1), prefix_routing perturbs its router with noise and poly_lora samples its skill routing, so
any shift of the random stream shows in the losses.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, ROOT
from mmpt.engine.checkpoint import KILL_ENV, WEIGHTS

pytestmark = pytest.mark.subprocess

ENV = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
ENV.pop(KILL_ENV, None)

# cb: 224 examples, 14 batches of 16 per epoch, 2 per step: epochs end at steps 7, 14, 21; evals
# (and checkpoints) at 3, 6, 7, 9, 12, 14, 15, 18, 21, 24
ONE = ["model=t5_tiny", "method=prefix_routing", "dataset=cb", "dataset.max_length=64", "trainer.batch_size=16",
       "trainer.eval_batch_size=64", "trainer.grad_accum=2", "trainer.max_steps=24", "trainer.eval_every=3",
       "trainer.log_every=1", "seed=3"]
# two tasks, 6 batches of 16 per epoch: epochs end at 6, 12; evals at 5, 6, 10, 12, 14
MIX = ["model=t5_tiny", "method=poly_lora", "dataset=glue_superglue_mix", "dataset.tasks=[wnli,wsc]",
       "dataset.epoch_size=96", "dataset.max_eval_per_task=16", "dataset.max_length=64", "trainer.batch_size=16",
       "trainer.eval_batch_size=64", "trainer.max_steps=14", "trainer.eval_every=5", "trainer.log_every=1",
       "seed=2"]
# 32 examples, 4 batches of 8 per epoch: epochs end at 4, 8; evals at 3, 4, 6, 8, 9, 10
FT = ["dataset=cb", "finetune_type=Poly", "k_shot=32", "dataset.max_length=64", "trainer.batch_size=8",
      "trainer.eval_batch_size=64", "trainer.max_steps=10", "trainer.eval_every=3", "trainer.log_every=1", "seed=1"]


def start(script, run_dir, args, kill_at=None, resume=False):
    env = {**ENV, KILL_ENV: kill_at} if kill_at else ENV
    cmd = [sys.executable, script, *args, f"hydra.run.dir={run_dir}"] + (["resume=true"] if resume else [])
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, killed=False) -> str:
    out, _ = proc.communicate(timeout=600)
    want = -signal.SIGKILL if killed else 0
    assert proc.returncode == want, f"exit {proc.returncode}, wanted {want}:\n{out[-3000:]}"
    return out


def run(script, run_dir, args, kill_at=None, resume=False) -> str:
    return finish(start(script, run_dir, args, kill_at, resume), killed=kill_at is not None)


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings: event, step, epoch, losses, learning rates, val metrics."""
    keep = lambda k: k in ("event", "step", "epoch") or k.startswith(("train/", "lr/", "val/"))
    return [{k: v for k, v in json.loads(line).items() if keep(k)} for line in open(run_dir / "metrics.jsonl")]


def assert_same_run(full: Path, cut: Path) -> None:
    a, b = rows(full), rows(cut)
    assert [(r["event"], r["step"]) for r in b] == [(r["event"], r["step"]) for r in a], "lines differ"
    diff = [(ra, rb) for ra, rb in zip(a, b) if ra != rb]
    assert not diff, f"{len(diff)} of {len(a)} lines differ, first: {diff[0]}"
    final = lambda m: {k: v for k, v in m.items() if k.split("/")[0] in ("val", "test") or k == "best_step"}
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert final(mb) == final(ma) and any(k.startswith("test/") for k in final(ma))
    assert 0 < mb["train_time_s"] <= mb["total_time_s"]
    for ck in ("last", "best"):
        wa, wb = (load_file(d / "checkpoints" / ck / WEIGHTS) for d in (full, cut))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"checkpoints/{ck} differs"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["best", "last"]  # no .old / .tmp left
    for split in ("val", "test"):
        assert (full / "predictions" / f"{split}.jsonl").read_text() == (cut / "predictions" / f"{split}.jsonl").read_text()


def files(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_one_task_killed_mid_epoch_at_an_epoch_end_and_mid_save_equals_uninterrupted(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    # the reference also shows resume=true on a dir without a checkpoint: one warning, a fresh run
    reference = start("train.py", full, ONE, resume=True)
    run("train.py", cut, ONE, kill_at="step:5")  # (a) mid-epoch: resumes at step 3 (epoch 0, batch 6)
    # (b) one step into epoch 1: resumes from the epoch-end checkpoint of step 7 (epoch 1, batch 0)
    run("train.py", cut, ONE, kill_at="step:8", resume=True)
    # (c) mid-save: only last.old (step 9) is complete; resumes there (epoch 1, batch 4)
    run("train.py", cut, ONE, kill_at="last-swap:12", resume=True)
    assert not (cut / "checkpoints" / "last").exists() and (cut / "checkpoints" / "last.old").exists()
    # (c) mid-save: last (step 15) and last.old (14) both complete; the next save must cope
    run("train.py", cut, ONE, kill_at="last-clean:15", resume=True)
    run("train.py", cut, ONE, resume=True)
    out = finish(reference)
    assert out.count(f"resume=true: {full} has no checkpoint; starting from scratch") == 1
    assert_same_run(full, cut)

    # resume=true into a finished run of another method is refused and changes nothing there
    before = files(full)
    proc = subprocess.run([sys.executable, "train.py", *ONE, "method=prefix", "resume=true", f"hydra.run.dir={full}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "resume" in proc.stderr and "method.name: prefix_routing -> prefix" in proc.stderr
    assert files(full) == before


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    """The uninterrupted mixture run (also the pre-trained run of the fine-tuning test)."""
    path = tmp_path_factory.mktemp("mix") / "full"
    run("train.py", path, MIX)
    return path


def test_mixture_killed_mid_save_equals_uninterrupted(tmp_path, mixture_run):
    cut = tmp_path / "cut"
    run("train.py", cut, MIX, kill_at="last-files:6")  # checkpoint 6 half written: resumes at 5
    assert (cut / "checkpoints" / "last.tmp").exists()
    run("train.py", cut, MIX, resume=True)
    assert_same_run(mixture_run, cut)


def test_finetune_killed_mid_epoch_equals_uninterrupted(tmp_path, mixture_run):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = [f"pretrained={mixture_run}", *FT]
    reference = start("finetune.py", full, args)
    run("finetune.py", cut, args, kill_at="step:7")  # resumes at step 6: epoch 1, batch 2
    run("finetune.py", cut, args, resume=True)
    finish(reference)
    assert_same_run(full, cut)
    zero_shot = lambda d: {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if "zero_shot" in k}
    assert zero_shot(full) and zero_shot(full) == zero_shot(cut)
