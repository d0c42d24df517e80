"""Benchmarks 2, 3, 6: padding strategy, rank vs generate evaluation, sweep overhead.

    python bench/pipeline.py [--shape t5-small] [--only 2 3 6]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, model_cfg, table  # noqa: E402
from mmpt.data import EncodedSplit, get_task, load_splits, make_loader, resolve_data_dir  # noqa: E402
from mmpt.engine.evaluate import predict  # noqa: E402
from mmpt.models import build_model  # noqa: E402

PREFIX = OmegaConf.create({"name": "prefix", "num_virtual_tokens": 10, "placement": "both", "init_std": 1.0})


def split(task_name, tokenizer, which="train", max_length=256):
    task = get_task(task_name)
    examples = load_splits(task_name, resolve_data_dir(None), 0)[which]
    return task, EncodedSplit(examples, tokenizer, max_length, task.verbalizers)


def pad_to(batch, length, pad_id):
    """The reference's padding: every source padded to max_length."""
    extra = length - batch["input_ids"].shape[1]
    return {**batch, "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0)}


def epoch_time(model, data, batch_size, dynamic: bool) -> float:
    opt = torch.optim.AdamW([model.method.prefix], lr=1e-3)
    start = time.perf_counter()
    for batch in make_loader(data, batch_size, train=True, seed=0, bucket=dynamic):
        if not dynamic:
            batch = pad_to(batch, 256, model.pad_id)
        loss, _ = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench_padding(shape, batch_size):
    model = build_model(model_cfg(shape), PREFIX)
    _, data = split("rte", model.tokenizer)
    dyn, pad = epoch_time(model, data, batch_size, True), epoch_time(model, data, batch_size, False)
    return {"#": 2, "measure": f"one RTE training epoch ({len(data)} ex., {shape}, prefix, batch {batch_size})",
            "mmpt": f"{dyn:.1f} s (dynamic + buckets)", "alternative": f"{pad:.1f} s (pad to 256)",
            "ratio": f"{pad / dyn:.2f}x faster", "target": ">= 2.5x faster"}


def bench_eval(steps):
    """Fully fine-tune the tiny T5 on SST-2, then time both eval modes on the SST-2 test set."""
    from mmpt.recipes import train
    from tests.conftest import compose_cfg

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(["model=t5_tiny", "method=full", "dataset=sst2", f"trainer.max_steps={steps}",
                           "trainer.batch_size=32", "trainer.eval_every=200", "dataset.max_length=64",
                           "optimizer.groups.backbone.lr=1e-3", "trainer.save_predictions=false"], run_dir=tmp)
        cfg.paths.data_dir = resolve_data_dir(None)
        from mmpt.engine import checkpoint
        train(cfg)
        model = build_model(cfg.model, cfg.method)
        checkpoint.load_weights(Path(tmp) / "checkpoints" / "best", model)
    task, data = split("sst2", model.tokenizer, "test", 64)
    loader = list(make_loader(data, 32, train=False))
    timings, preds = {}, {}
    for mode in ("rank", "generate"):
        start = time.perf_counter()
        preds[mode], _ = predict(model, loader, lambda i: task.verbalizers, mode, max_new_tokens=10)
        timings[mode] = time.perf_counter() - start
    agree = sum(preds["rank"][i] == preds["generate"][i] for i in preds["rank"]) / len(preds["rank"])
    n = len(data)
    return {"#": 3, "measure": f"eval throughput on SST-2 test ({n} ex., trained t5_tiny), agreement {agree:.1%}",
            "mmpt": f"{n / timings['rank']:.0f} ex/s (rank)", "alternative": f"{n / timings['generate']:.0f} ex/s (generate, 10 new)",
            "ratio": f"{timings['generate'] / timings['rank']:.2f}x faster", "target": ">= 3x faster, >= 99% agree"}


def bench_sweep(trials):
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        cmd = [sys.executable, "train.py", "-m", "model=t5_tiny", "method=prefix", "dataset=cb", "trainer.max_steps=20",
               "trainer.eval_every=20", "hparams_search=prefix", f"hydra.sweeper.n_trials={trials}",
               f"hydra.sweep.dir={tmp}/sweep"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        runs = [json.loads(p.read_text())["total_time_s"] for p in Path(tmp, "sweep").glob("*/metrics.json")]
    overhead = (wall - sum(runs)) / trials
    return {"#": 6, "measure": f"per-trial overhead of a Hydra + Optuna sweep ({trials} trials, process start included)",
            "mmpt": f"{overhead:.2f} s", "alternative": f"{sum(runs) / trials:.2f} s training + eval per trial",
            "ratio": "-", "target": "<= 3 s"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="t5-small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-train-steps", type=int, default=600)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--only", nargs="+", type=int, default=[2, 3, 6])
    args = ap.parse_args()
    rows = []
    if 2 in args.only:
        rows.append(bench_padding(args.shape, args.batch))
    if 3 in args.only:
        rows.append(bench_eval(args.eval_train_steps))
    if 6 in args.only:
        rows.append(bench_sweep(args.trials))
    print(f"machine: {machine()}\n")
    print(table(rows))
    Path(__file__).with_name("pipeline.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
