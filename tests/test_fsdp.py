"""trainer.strategy=fsdp: 2 CPU processes (gloo) under torchrun train exactly like 1 process (dropout
and routing noise off) for lora, prefix_routing and poly_lora on llama_tiny and t5_tiny; the
checkpoints hold the whole trainable tensors in today's format (export reads them); finetune.py
runs with it too; a killed FSDP run resumes exactly; fsdp outside torchrun and on a quantized
backbone is one line."""
import json
from types import SimpleNamespace
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, ROOT, compose_cfg
from mmpt.models import build_model
from mmpt import settings
from mmpt.engine import sharding
from mmpt.engine.checkpoint import KILL_ENV, WEIGHTS
from mmpt.errors import ConfigError

pytestmark = [pytest.mark.subprocess, pytest.mark.distributed]

ENV = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1"}
ENV.pop(KILL_ENV, None)
COMMON = ["dataset=cb", "dataset.max_length=64", "k_shot=32", "trainer.batch_size=8", "trainer.max_steps=6",
          "trainer.eval_every=3", "trainer.log_every=1", "seed=3"]
NOISE_OFF = {"lora": ["method.dropout=0.0"], "prefix_routing": ["router.perturb=false", "router.dropout=0.0"],
             "poly_lora": ["router=moe", "router.noise_std=0.0", "method.n_skills=4", "router.top_k=2"]}
RUNS = {f"{model}-{method}": [f"model={model}", f"method={method}", *NOISE_OFF[method], *COMMON]
        + (["model.dropout=0.0"] if model == "t5_tiny" else [])
        for model in ("llama_tiny", "t5_tiny") for method in NOISE_OFF}


def finetune_of(run: str) -> list:
    """finetune.py (Poly: skills + a new routing row) on the run `run` of the same launch."""
    return ["finetune:pretrained=OUT/" + run, "dataset=rte", "finetune_type=Poly", "k_shot=16", "dataset.max_length=64",
            "trainer.batch_size=8", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=1", "seed=1"]


RUNS["finetune-llama_tiny-poly_lora"] = finetune_of("llama_tiny-poly_lora")


def launch(out, runs: dict, procs: int, *more, env=ENV, check=True):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [])
    specs = [f"{name}={','.join(args + list(more))}".replace("OUT/", f"{out}/") for name, args in runs.items()]
    proc = subprocess.run([*cmd, "tests/fsdp_driver.py", str(out), *specs], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run):
    return {json.loads(l)["step"]: json.loads(l)["train/loss"] for l in open(run / "metrics.jsonl") if "train/loss" in l}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    launch(root / "one", RUNS, 1)
    launch(root / "fsdp", RUNS, 2, "trainer.strategy=fsdp")
    return root


@pytest.mark.parametrize("name", list(RUNS))
def test_two_fsdp_processes_train_like_one(runs, name):
    one, two = runs / "one" / name, runs / "fsdp" / name
    a, b = losses(one), losses(two)
    assert len(a) == (4 if name.startswith("finetune") else 6) and a.keys() == b.keys()
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    w1, w2 = (load_file(d / "checkpoints" / "last" / WEIGHTS) for d in (one, two))
    assert w1.keys() == w2.keys() and w1  # the whole tensors, under the same names
    # relative to the tensor: Adam turns the rounding of near-zero gradients (zero-initialised B)
    # into lr-sized steps; 2-process DDP is as far from 1 process (t5 poly_lora: 4e-3)
    for k in w1:
        assert w1[k].shape == w2[k].shape and (w1[k] - w2[k]).norm() <= 1e-2 * w1[k].norm(), k
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    scores = lambda m, routing: {k: v for k, v in m.items() if k.startswith(("val/", "test/"))
                                 and ("/routing/" in k) == routing}
    assert scores(m2, False) == pytest.approx(scores(m1, False), rel=1e-6) and "test/acc" in m1
    # routing statistics are smooth functions of the routing weights, which differ by the rounding
    # above (t5 poly_lora: 3e-6 relative on this machine's torch build), not of the argmax
    assert scores(m2, True) == pytest.approx(scores(m1, True), rel=1e-4)
    # FSDP's processes hold half of the frozen weights each
    assert m2["backbone_mb"] < 0.6 * m1["backbone_mb"]


def test_an_fsdp_checkpoint_exports_like_any_run(runs, tmp_path):
    from mmpt.export.__main__ import export

    run = runs / "fsdp" / "llama_tiny-lora"
    out = export(run, "peft", tmp_path / "peft")
    adapter = load_file(out / "adapter_model.safetensors")
    best = load_file(run / "checkpoints" / "best" / WEIGHTS)
    assert len(adapter) == len(best) > 0


def test_a_killed_fsdp_run_resumes_exactly(tmp_path):
    runs = {"lora": RUNS["llama_tiny-lora"]}
    launch(tmp_path / "full", runs, 2, "trainer.strategy=fsdp")
    cut = launch(tmp_path / "cut", runs, 2, "trainer.strategy=fsdp", env={**ENV, KILL_ENV: "step:3"}, check=False)
    assert cut.returncode != 0 and not (tmp_path / "cut" / "lora" / "metrics.json").exists()
    launch(tmp_path / "cut", runs, 2, "trainer.strategy=fsdp", "resume=true")
    full, resumed = tmp_path / "full" / "lora", tmp_path / "cut" / "lora"
    assert losses(full) == losses(resumed)
    for ck in ("last", "best"):
        wa, wb = (load_file(d / "checkpoints" / ck / WEIGHTS) for d in (full, resumed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    final = lambda d: {k: v for k, v in json.loads((d / "metrics.json").read_text()).items()
                       if k.startswith(("val/", "test/")) or k == "best_step"}
    assert final(full) == final(resumed)


def test_fsdp_is_refused_outside_torchrun_and_on_quantized_backbones(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    plain = SimpleNamespace(backbone=torch.nn.Linear(2, 2))
    cfg = compose_cfg(["model=llama_tiny", "method=lora", "trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node N"):
        sharding.strategy(settings.training(cfg.trainer).strategy, plain)
    monkeypatch.setenv("LOCAL_RANK", "0")
    q = compose_cfg(["model=llama_tiny", "model.quantization=nf4", "method=lora", "trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match="cannot shard the integer weights of a quantized backbone"):
        sharding.strategy(settings.training(q.trainer).strategy, build_model(q.model, q.method))
    with pytest.raises(ConfigError, match=r"expected one of \['ddp', 'fsdp'\]"):
        settings.training(compose_cfg(["model=llama_tiny", "method=lora", "trainer.strategy=zero3"]).trainer)
    env = {k: v for k, v in ENV.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    proc = subprocess.run([sys.executable, "train.py", "model=llama_tiny", "method=lora", "dataset=cb",
                           "trainer.strategy=fsdp", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "fsdp shards the model over the processes torchrun starts" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
