"""GPU benchmark (one script, about 5 minutes on one GPU): every method's bf16 training step
against PEFT's, the prefix step's FLOP/s against a bf16 matmul, and an nf4 QLoRA step.

    python bench/gpu.py [--out bench/gpu.md]        # on a machine with a CUDA GPU
    python bench/gpu.py --device cpu --tiny         # the same logic at tiny shapes (tests)

Shapes: T5-base (12+12 layers, d 768) and a 1.1B Llama (22 layers, d 2048, GQA 32/4 heads, gated
MLP 5632), random weights (only speed matters), MiniLM's 30,522-token vocabulary; `--tiny`: d 64,
2 layers. Steps: AdamW on the method's parameters, bf16 autocast (fp32 on CPU), batch 8 x source
256 (+ 8 target tokens); tokens/s counts source + target tokens. PEFT runs its own tuner of the
same method with the same settings where it has one (full: the plain transformers model).
On a machine without a CUDA device it refuses in one line (exit 2).
"""
import argparse
import contextlib
import gc
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("full", "prompt_tuning", "prefix", "lora", "ia3", "prefix_routing", "prompt_routing", "poly_lora",
           "poly_ia3")
SHAPES = {
    "t5-base": ("t5_tiny", dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, dropout=0.0)),
    "llama-1.1b": ("llama_tiny", dict(d_model=2048, d_ff=5632, num_layers=22, num_heads=32, num_kv_heads=4,
                                      max_positions=2048)),
}
TINY = {
    "t5-tiny": ("t5_tiny", dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout=0.0)),
    "llama-tiny": ("llama_tiny", dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                      max_positions=1024)),
}


def run_cfg(model: str, shape: dict, method: str, quantization: str = "none"):
    """The run config train.py would compose for `model=<model> method=<method>`, at `shape`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", f"method={method}"])
    with open_dict(cfg):
        cfg.model.update(shape)
        cfg.model.quantization = quantization
        if "dropout" in cfg.method:
            cfg.method.dropout = 0.0
    return cfg


def batch(b: int, s: int, t: int, device, vocab: int = 30522) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (b, s), generator=g)
    labels = torch.randint(1000, vocab, (b, t), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "task_id": torch.zeros(b, dtype=torch.long), "label": torch.zeros(b, dtype=torch.long)}
    return {k: v.to(device) for k, v in data.items()}


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, device, repeat: int) -> float:
    """Median seconds of step() after two warm-up calls."""
    for _ in range(2):
        step()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def trainer(model, params, loss_fn, device):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with autocast(device):
            loss = loss_fn()
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def mmpt_step(cfg, data, device):
    from mmpt.models import build_model

    torch.manual_seed(0)
    with torch.device(device):  # random weights made on the device: a 1B model builds in seconds
        model = build_model(cfg.model, cfg.method, cfg.get("router"), n_tasks=1)
    model.to(device).train()
    params = [p for ps in model.param_groups().values() for p in ps]
    return trainer(model, params, lambda: model(data)[0], device), model


def peft_config(cfg, task_type: str, family_targets: dict):
    """PEFT's tuner for the run's method, with its settings; None where PEFT has none.
    family_targets: the backbone family's adapter target sets (method.target_modules names one)."""
    import peft
    from omegaconf import OmegaConf

    from mmpt.methods.adapters import target_pattern

    m = cfg.method
    if "target_modules" in m:  # a set name (lora, ia3, ...): the family's regex of that name
        m = OmegaConf.merge(m, {"target_modules": target_pattern(m, {"targets": family_targets})})
    if m.name == "prompt_tuning":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "lora":
        return peft.LoraConfig(task_type=task_type, r=m.rank, lora_alpha=m.alpha, lora_dropout=0.0,
                               target_modules=m.target_modules)
    if m.name == "ia3":
        return peft.IA3Config(task_type=task_type, target_modules=m.target_modules, feedforward_modules=[])
    if m.name == "poly_lora":
        return peft.PolyConfig(task_type=task_type, r=m.rank, n_tasks=1, n_skills=m.n_skills, n_splits=m.n_splits,
                               target_modules=m.target_modules)
    return None


def peft_step(cfg, data, device):
    """PEFT's step for the same method on the same backbone, or None (no PEFT tuner for it)."""
    from mmpt.models import load_backbone

    torch.manual_seed(0)
    with torch.device(device):
        backbone, _ = load_backbone(cfg.model)
    backbone.to(device).train()
    seq2seq = backbone.config.is_encoder_decoder
    if cfg.method.name == "full":
        model, params = backbone, list(backbone.parameters())
    else:
        import peft

        from mmpt.models.family import family_of

        config = peft_config(cfg, "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
                             family_of(backbone.config).targets(backbone.config))
        if config is None:
            return None
        backbone.requires_grad_(False)
        model = peft.get_peft_model(backbone, config)
        params = [p for p in model.parameters() if p.requires_grad]
    extra = {"task_ids": data["task_id"]} if cfg.method.name == "poly_lora" else {}
    if seq2seq:
        kw = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"], "labels": data["labels"]}
    else:  # the prompt and its continuation in one sequence, the loss on the continuation only
        ids = torch.cat([data["input_ids"], data["labels"]], 1)
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "labels": torch.cat([torch.full_like(data["input_ids"], -100), data["labels"]], 1)}
    return trainer(model, params, lambda: model(**kw, **extra).loss, device)


def peak_mb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")


def reset(device):
    gc.collect()  # the previous row's models (modules hold reference cycles)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_rate(n: int, device) -> float:
    """Measured FLOP/s of an n x n bf16 matmul (fp32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, 10)


def flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def fmt(x, unit="") -> str:
    return "-" if x is None or x != x else f"{x:,.0f}{unit}"


def measure(args, device) -> list[dict]:
    shapes = TINY if args.tiny else SHAPES
    b, s, t = (2, 16, 4) if args.tiny else (8, 256, 8)
    data = batch(b, s, t, device)
    tokens = b * (s + t)
    rows = []
    for name, (model, shape) in shapes.items():
        for method in args.methods:
            cfg = run_cfg(model, shape, method)
            reset(device)
            step = mmpt_step(cfg, data, device)[0]
            ours = timed(step, device, args.repeat)
            mem = peak_mb(device)
            del step
            reset(device)
            theirs_step = peft_step(cfg, data, device)
            theirs = timed(theirs_step, device, args.repeat) if theirs_step else None
            del theirs_step
            rows.append({"shape": name, "method": method, "mmpt tokens/s": fmt(tokens / ours),
                         "PEFT tokens/s": fmt(tokens / theirs if theirs else None),
                         "mmpt / PEFT time": f"{ours / theirs:.2f}x" if theirs else "-",
                         "mmpt peak MB": fmt(mem)})
    # the prefix step's achieved FLOP/s against a measured bf16 matmul
    name, (model, shape) = next(iter(shapes.items()))
    step = mmpt_step(run_cfg(model, shape, "prefix"), data, device)[0]
    rate = flops(step) / timed(step, device, args.repeat)
    peak = matmul_rate(256 if args.tiny else 8192, device)
    rows.append({"shape": name, "method": "prefix: achieved FLOP/s vs bf16 matmul",
                 "mmpt tokens/s": f"{rate / 1e9:,.1f} GFLOP/s", "PEFT tokens/s": f"matmul {peak / 1e9:,.1f} GFLOP/s",
                 "mmpt / PEFT time": f"{rate / peak:.0%} of matmul", "mmpt peak MB": "-"})
    # QLoRA: LoRA on the nf4 causal backbone, against PEFT's LoRA on the same nf4 backbone
    name, (model, shape) = list(shapes.items())[-1]
    cfg = run_cfg(model, shape, "lora", quantization="nf4")
    reset(device)
    step = mmpt_step(cfg, data, device)[0]
    ours, mem = timed(step, device, args.repeat), peak_mb(device)
    del step
    reset(device)
    theirs = timed(peft_step(cfg, data, device), device, args.repeat)
    rows.append({"shape": name, "method": "lora on an nf4 backbone (QLoRA)", "mmpt tokens/s": fmt(tokens / ours),
                 "PEFT tokens/s": fmt(tokens / theirs), "mmpt / PEFT time": f"{ours / theirs:.2f}x",
                 "mmpt peak MB": fmt(mem)})
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(out + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: the logic at tiny shapes)")
    ap.add_argument("--tiny", action="store_true", help="d 64, 2-layer shapes instead of t5-base and 1.1B")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--repeat", type=int, default=5, help="timed steps per measurement (median)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu.md", help="where the table is written")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: bench/gpu.py measures GPU throughput and this machine has no CUDA device; run it on a "
              "GPU machine (`--device cpu --tiny` only exercises its logic at tiny shapes)", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("error: --device cpu runs the tiny shapes only (add --tiny): t5-base and 1.1B steps are GPU "
              "measurements", file=sys.stderr)
        return 2
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    start = time.perf_counter()
    logging.disable(logging.WARNING)  # transformers' and PEFT's notices would interleave with the table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = measure(args, device)
    finally:
        logging.disable(logging.NOTSET)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    text = (f"{where}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s; bf16 autocast"
            f"{'' if device.type == 'cuda' else ' off (CPU: fp32)'}\n\n{table(rows)}\n")
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
