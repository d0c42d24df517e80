"""Benchmarks 1, 4, 5: prefix-tuning step time vs PEFT, achieved FLOP/s, peak memory.

    python bench/speed.py [--shapes t5-small t5-base] [--batch 8] [--source 128] [--target 4] [--prefix 10]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, model_cfg, t5, table, timeit  # noqa: E402
from mmpt.models import build_model  # noqa: E402


def batch(b, s, t, vocab=30522):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (b, s), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(2, vocab, (b, t), generator=g)}


def mmpt_prefix(shape, p, placement="decoder"):
    method = OmegaConf.create({"name": "prefix", "num_virtual_tokens": p, "placement": placement, "init_std": 1.0})
    return build_model(model_cfg(shape), method)


def mmpt_step(model, data):
    opt = torch.optim.AdamW([model.method.prefix], lr=1e-3)

    def step():
        loss, _ = model(data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def peft_step(shape, p, data):
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(t5(shape, vocab=30522), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=p))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)

    def step():
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def matmul_rate(n=2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timeit(lambda: a @ b, repeat=10)


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_rss_mb(mode, shape, args) -> float:
    """Peak RSS growth (MB) during one training step, sampled every millisecond in a fresh
    process: mode 'prefix' (prefix method, both stacks) or 'frozen' (the frozen model alone)."""
    code = f"""
import sys, threading, time, psutil, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from bench.speed import batch, mmpt_prefix
model = mmpt_prefix({shape!r}, {args.prefix}, "both")
data = batch({args.batch}, {args.source}, {args.target})
proc, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)
base = proc.memory_info().rss
thread = threading.Thread(target=sample); thread.start()
if {mode!r} == "prefix":
    loss, _ = model(data); loss.backward()
else:  # gradients flow back to the input embeddings, through the same frozen layers
    emb = model.backbone.get_input_embeddings()(data["input_ids"]).detach().requires_grad_()
    model.backbone(inputs_embeds=emb, attention_mask=data["attention_mask"], labels=data["labels"]).loss.backward()
done.set(); thread.join()
print((peak[0] - base) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["t5-small", "t5-base"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--source", type=int, default=128)
    ap.add_argument("--target", type=int, default=4)
    ap.add_argument("--prefix", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = batch(args.batch, args.source, args.target)
    rows = []
    for shape in args.shapes:
        ours = mmpt_step(mmpt_prefix(shape, args.prefix), data)
        t_ours = timeit(ours, args.repeat)
        t_peft = timeit(peft_step(shape, args.prefix, data), args.repeat)
        rows.append({"#": 1, "measure": f"prefix step, placement=decoder vs PEFT ({shape})",
                     "mmpt": f"{t_ours:.3f} s", "alternative": f"{t_peft:.3f} s",
                     "ratio": f"{t_ours / t_peft:.2f}x", "target": "<= 0.9x"})
    shape = "t5-base" if "t5-base" in args.shapes else args.shapes[-1]
    step = mmpt_step(mmpt_prefix(shape, args.prefix, "both"), data)
    rate = flops_of(step) / timeit(step, args.repeat)
    peak = matmul_rate()
    rows.append({"#": 4, "measure": f"achieved FLOP/s, prefix step ({shape}, both stacks) vs dense matmul",
                 "mmpt": f"{rate / 1e9:.1f} GFLOP/s", "alternative": f"{peak / 1e9:.1f} GFLOP/s",
                 "ratio": f"{rate / peak:.0%}", "target": ">= 40%"})
    mem_p, mem_f = peak_rss_mb("prefix", shape, args), peak_rss_mb("frozen", shape, args)
    rows.append({"#": 5, "measure": f"peak memory of the step vs frozen forward+backward ({shape})",
                 "mmpt": f"{mem_p:.0f} MB", "alternative": f"{mem_f:.0f} MB",
                 "ratio": f"{mem_p / mem_f:.2f}x", "target": "<= 1.2x"})
    print(f"machine: {machine()}; batch {args.batch}, source {args.source}, target {args.target}, prefix {args.prefix}\n")
    print(table(rows))
    Path(__file__).with_name("speed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
