"""A quantized (nf4) backbone under a real torchrun (2 CPU processes, gloo): DDP trains, in one run
dir, as one process does with the same global batch; FSDP is refused in one line, with nothing
written and no torchrun traceback. Every rank builds its in-process backbone itself (its own
temporary copy: save_pretrained writes on rank 0 only once a process group is up)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT

pytestmark = [pytest.mark.subprocess, pytest.mark.distributed]

ENV = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
for _k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
    ENV.pop(_k, None)
ARGS = ["model.quantization=nf4", "method=lora", "method.dropout=0", "dataset=cb", "trainer.max_steps=2", "trainer.eval_every=2",
        "trainer.log_every=1", "trainer.batch_size=4", "dataset.max_length=48", "trainer.save_predictions=false"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]


def run(launcher: list, *args: str):
    return subprocess.run([*launcher, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)


def losses(out):
    return [json.loads(line)["train/loss"] for line in open(out / "metrics.jsonl") if '"train"' in line]


@pytest.mark.parametrize("model", ["llama_tiny", "t5_tiny"])
def test_nf4_ddp_under_torchrun_trains_like_one_process(tmp_path, model):
    args = [f"model={model}", *ARGS, *(["model.dropout=0"] if model == "t5_tiny" else [])]  # each rank: its own masks
    one = run([sys.executable], *args, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(TORCHRUN, *args, "trainer.strategy=ddp", f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (losses(tmp_path / d) for d in ("one", "two"))
    assert len(a) == len(b) == 2 and all(abs(x - y) < 1e-4 for x, y in zip(a, b)), (a, b)
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["val/acc"] == m2["val/acc"] and m1["test/acc"] == m2["test/acc"]


def test_nf4_fsdp_under_torchrun_is_one_line_and_writes_nothing(tmp_path):
    proc = run(TORCHRUN, "model=llama_tiny", *ARGS, "trainer.strategy=fsdp", f"hydra.run.dir={tmp_path / 'run'}")
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: config error at `trainer.strategy`: fsdp cannot shard "
                                                   "the integer weights of a quantized backbone"), out[-3000:]
    assert not (tmp_path / "run").exists()
