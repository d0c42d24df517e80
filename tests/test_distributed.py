"""torchrun with 2 CPU processes (gloo) trains exactly like 1 process with the same global batch
(with dropout off: each rank draws its own dropout masks), in one run dir that only rank 0 writes;
on T5 and on a causal LM (llama_tiny)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, ROOT

pytestmark = [pytest.mark.subprocess, pytest.mark.distributed]

MODELS = {"t5_tiny": ["model.dropout=0.0"], "llama_tiny": []}  # llama_tiny has no dropout
ARGS = ["method=prefix", "dataset=cb", "trainer.max_steps=6", "trainer.eval_every=3",
        "trainer.log_every=1", "trainer.batch_size=8", "dataset.max_length=64"]


def run(run_dir: str, procs: int, model: str) -> None:
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    args = [f"model={model}", *MODELS[model], *ARGS, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([*launcher, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def read(out: Path):
    losses = [json.loads(l)["train/loss"] for l in open(out / "metrics.jsonl") if '"train"' in l]
    return json.loads((out / "metrics.json").read_text()), losses, load_file(out / "checkpoints/last/trainable.safetensors")


@pytest.mark.parametrize("model", list(MODELS))
def test_two_processes_match_one_process_in_one_run_dir(tmp_path, model):
    run(str(tmp_path / "one"), 1, model)
    # each process resolves ${now:...} itself, microseconds apart: both must use rank 0's dir
    run(str(tmp_path / "two" / "${now:%H-%M-%S-%f}"), 2, model)
    (two,) = (tmp_path / "two").iterdir()
    (m1, loss1, w1), (m2, loss2, w2) = read(tmp_path / "one"), read(two)
    assert len(loss1) == len(loss2) == 6
    assert torch.allclose(torch.tensor(loss1), torch.tensor(loss2), atol=1e-4)
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5), name
    for key in ("val/acc", "test/acc", "test/f1", "best_step"):
        assert m1[key] == m2[key], key
    # only rank 0 wrote: one line per event and per log message, no duplicates
    assert sum(1 for l in open(two / "metrics.jsonl") if '"eval"' in l) == 2
    log = (two / "train.log").read_text()
    assert log.count("final: ") == 1 and log.count("trainable /") == 1
    assert (two / ".hydra" / "config.yaml").exists()
