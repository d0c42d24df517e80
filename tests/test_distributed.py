"""torchrun with 2 CPU processes (gloo) trains exactly like 1 process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import DATA, ROOT

ARGS = ["model=t5_tiny", "method=prefix", "dataset=cb", "trainer.max_steps=6", "trainer.eval_every=3",
        "trainer.log_every=1", "trainer.batch_size=8", "model.dropout=0.0", "dataset.max_length=64"]


def run(out: Path, procs: int):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "train.py", *ARGS, f"hydra.run.dir={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = [json.loads(l)["train/loss"] for l in open(out / "metrics.jsonl") if '"train"' in l]
    return json.loads((out / "metrics.json").read_text()), losses, load_file(out / "checkpoints/last/trainable.safetensors")


def test_two_processes_match_one_process(tmp_path):
    m1, loss1, w1 = run(tmp_path / "one", 1)
    m2, loss2, w2 = run(tmp_path / "two", 2)
    assert len(loss1) == len(loss2) == 6
    assert torch.allclose(torch.tensor(loss1), torch.tensor(loss2), atol=1e-4)
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5), name
    for key in ("val/acc", "test/acc", "test/f1", "best_step"):
        assert m1[key] == m2[key], key
    # only rank 0 wrote: one line per event, no duplicates
    assert sum(1 for l in open(tmp_path / "two" / "metrics.jsonl") if '"eval"' in l) == 2
