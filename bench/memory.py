"""Memory of one LoRA training step on a 135M-parameter Llama shape: fp32 / nf4 / int8 backbones,
with and without gradient checkpointing, and FSDP against DDP with 2 processes (per rank).

    python bench/memory.py [--source 512] [--batch 1] [--layers 30]

The shape is SmolLM2-135M's (d 576, 30 layers, 9 query / 3 key-value heads, gated MLP 1536, vocabulary
49,152 with tied input/output embeddings: 21% of the weights, which 4-bit quantization leaves in
float). Random weights are saved once to a temporary directory and every measurement loads them
as `model=local` in a fresh process (a fresh allocator; torchrun for the two-process rows):
- weights MB: the backbone's tensors as loaded (engine/cost.py backbone_bytes: packed 4-bit or
  8-bit weights, their scales and the float layers; under FSDP the process's shards);
- step MB: the growth of the resident set during a second forward + backward + AdamW step over
  what the process held before it (sampled every millisecond; glibc's mmap threshold fixed so
  freed tensors leave the resident set), i.e. activations and gradients (under FSDP also the
  gathered weights); with LoRA (rank 8 on q, v) that is almost all activations.
Prints a markdown table with the ratios the issue asks for, and the machine's load.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
             vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048)
MB = 2 ** 20


def save_model(path: Path, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from mmpt.models.backbone import load_tokenizer, minilm_dir

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tok = load_tokenizer(minilm_dir())  # ids stay below its 30,522; the table is SmolLM2's size
    config = LlamaConfig(num_hidden_layers=layers, head_dim=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


class PeakRSS:
    """Peak resident set (bytes) while the block runs, sampled every millisecond."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def one(args) -> None:
    """One measurement in this process (or this torchrun rank): print a JSON line."""
    import torch
    from omegaconf import OmegaConf

    from mmpt import distributed
    from mmpt.engine import cost, recompute, sharding
    from mmpt.models import build_model

    distributed.init()
    model_cfg = OmegaConf.create({"build": "local", "name_or_path": args.model_dir, "tokenizer": None,
                                  "quantization": args.quant, "targets": {"lora": r".*self_attn\.(q_proj|v_proj)"}})
    method = OmegaConf.create({"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.0,
                               "target_modules": r".*self_attn\.(q_proj|v_proj)"})
    torch.manual_seed(0)
    model = build_model(model_cfg, method).train()  # from_pretrained returns eval mode; checkpointing acts in training
    recompute.enable(model, args.gc)
    net = sharding.wrap(model, args.strategy, torch.device("cpu"))
    params = [p for ps in model.param_groups().values() for p in ps]
    opt = torch.optim.AdamW(params, lr=1e-4)
    n = distributed.world_size()
    b = args.batch * n  # a global batch: each process takes its rows, as the trainer does
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (b, args.source), generator=g)
    batch = distributed.shard({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                               "labels": torch.randint(1000, 30000, (b, 8), generator=g)})
    def step():
        loss, _ = net(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # once first: the optimizer's state and one-time buffers are not the step's memory
    with PeakRSS() as rss:
        step()
    out = {"rank": distributed.rank(), "weights_mb": cost.backbone_bytes(model.backbone) / MB,
           "step_mb": (rss.peak - rss.base) / MB, "rss_mb": rss.base / MB}
    print("RESULT " + json.dumps(out), flush=True)
    distributed.barrier()


def measure(model_dir, quant="none", gc=False, procs=1, strategy="ddp", args=None) -> list[dict]:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [])
    cmd += [str(Path(__file__)), "--one", "--model-dir", str(model_dir), "--quant", quant, "--strategy", strategy,
            "--source", str(args.source), "--batch", str(args.batch)] + (["--gc"] if gc else [])
    # A fixed mmap threshold: glibc then maps every tensor of 64 KiB or more on its own and unmaps it
    # when freed, so the resident set follows the live tensors (its default raises the threshold
    # after frees, and memory freed by the first step would hide the second step's growth).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    if procs > 1:
        env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"measurement {quant} gc={gc} {strategy} x{procs} failed: {out.stderr.strip()[-500:]}")
    return sorted((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")),
                  key=lambda r: r["rank"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=int, default=512, help="source tokens per example (8 target tokens follow)")
    ap.add_argument("--batch", type=int, default=1, help="examples per process")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--quant", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        one(args)
        return 0
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmpt-bench-memory-") as tmp:
        save_model(Path(tmp), args.layers)
        rows, res = [], {}
        for quant in ("none", "nf4", "int8"):
            for gc in (False, True):
                (r,) = measure(tmp, quant, gc, args=args)
                res[quant, gc] = r
                rows.append({"backbone": "fp32" if quant == "none" else quant, "checkpointing": "on" if gc else "off",
                             "processes": 1, "weights MB": f"{r['weights_mb']:.0f}", "step MB": f"{r['step_mb']:.0f}"})
        for strategy in ("ddp", "fsdp"):
            for r in measure(tmp, procs=2, strategy=strategy, args=args):
                res[strategy, r["rank"]] = r
                rows.append({"backbone": "fp32", "checkpointing": "off", "processes": f"2, {strategy}, rank {r['rank']}",
                             "weights MB": f"{r['weights_mb']:.0f}", "step MB": f"{r['step_mb']:.0f}"})
    keys = list(rows[0])
    print(f"LoRA r8 (q, v) step on a {args.layers}-layer SmolLM2-135M shape, batch {args.batch} x source "
          f"{args.source} (+8 target) per process, CPU; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    nf4 = res["nf4", False]["weights_mb"] / res["none", False]["weights_mb"]
    gc = res["none", True]["step_mb"] / res["none", False]["step_mb"]
    fsdp = max(res["fsdp", r]["weights_mb"] for r in (0, 1)) / max(res["ddp", r]["weights_mb"] for r in (0, 1))
    print(f"\nnf4 weights / fp32 weights: {nf4:.2f}x (target <= 0.35x); checkpointing step / no checkpointing "
          f"(fp32, source {args.source}): {gc:.2f}x (target <= 0.6x); FSDP per-rank weights / DDP's, 2 ranks: "
          f"{fsdp:.2f}x (target <= 0.6x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
