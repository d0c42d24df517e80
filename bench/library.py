"""What an expert library costs: build time, first (computing) and cached load, adapter memory and
eval throughput of each library finetune_type against one plain LoRA, on random LoRA experts.

    python bench/library.py [--shape mini|t5-small|t5-base] [--experts 4 8] [--batch 16] [--source 64]
    python bench/library.py --scale [8 64 256]     # arrow and phatgoose at scale (bench/library_scale.py)

Random weights (only cost matters, not scores). The default `mini` shape (a 4+4-layer T5, width
256) runs in under 2 minutes on 2 CPU cores; t5-small / t5-base take several.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHAPES, machine, model_cfg, table, timeit  # noqa: E402

SHAPES = {"mini": dict(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8), **SHAPES}
from mmpt.data import get_task  # noqa: E402
from mmpt.engine import checkpoint  # noqa: E402
from mmpt.library import Library  # noqa: E402
from mmpt.library.extract import build  # noqa: E402
from mmpt.library.phatgoose import GATES  # noqa: E402
from mmpt.library.types import types_of  # noqa: E402
from mmpt.recipes.library import prepare_library_model  # noqa: E402
from mmpt.methods.adapters import Wrapped  # noqa: E402
from mmpt.models import build_model  # noqa: E402

LORA = {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": r".*(SelfAttention|EncDecAttention)\.(q|v)"}
OPTS = OmegaConf.create({"top_k": 4, "temperature": 1.0, "density": 0.2, "majority_sign": "total",
                         "granularity": "finegrained"})


def shape_cfg(shape: str):
    return OmegaConf.merge(model_cfg("t5-small"), SHAPES[shape])


def fake_run(path: Path, shape: str, seed: int):
    """A train.py run dir with random LoRA weights (what `build` reads: config + checkpoints/best)."""
    cfg = OmegaConf.create({"seed": 0, "model": shape_cfg(shape), "method": LORA, "router": None,
                            "dataset": {"name": "cb"}})
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.method)
    with torch.no_grad():
        for p in model.method.parameters():
            p.normal_(0, 0.02)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    checkpoint.save(path / "checkpoints" / "best", model, {"method": "lora"})
    return model


def batch(b, s, vocab=30522):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (b, s), generator=g)
    choices = torch.randint(2, vocab, (b, 2, 2), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": choices[:, 0],
            "choice_ids": choices, "choice_mask": torch.ones(b, 2, dtype=torch.bool),
            "label": torch.zeros(b, dtype=torch.long), "task_id": torch.zeros(b, dtype=torch.long),
            "index": torch.arange(b)}


def adapter_mb(model) -> float:
    """Megabytes the method adds to the frozen backbone: what the adapter layers hold besides the
    Linear they wrap (experts, prototypes, merged updates), and the method's own parameters."""
    tensors = {}
    for m in model.backbone.modules():
        if isinstance(m, Wrapped):
            base = {id(t) for t in [*m.base.parameters(), *m.base.buffers()]}
            tensors.update({id(t): t for t in [*m.parameters(), *m.buffers()] if id(t) not in base})
    tensors.update({id(t): t for t in [*model.method.parameters(), *model.method.buffers()]})
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def random_gates(lib) -> dict:
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(len(lib.names), A.shape[-1], generator=g) for m, (A, _) in lib.lora_stack().items()}


def main():
    if "--scale" in sys.argv or "--scale-worker" in sys.argv:
        from bench.library_scale import main as scale
        return scale()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="mini", choices=sorted(SHAPES))
    ap.add_argument("--experts", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--source", type=int, default=64)
    args = ap.parse_args()
    data = batch(args.batch, args.source)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [tmp / f"run{i}" for i in range(max(args.experts))]
        single = None
        for i, run in enumerate(runs):
            model = fake_run(run, args.shape, i)
            single = single or model.eval()
        lora_s = timeit(lambda: single.score(data), repeat=3, warmup=1)
        rows.append({"setting": "one LoRA (baseline)", "experts": 1, "build s": "-", "first load s": "-",
                     "cached load s": "-", "adapter MB": f"{adapter_mb(single):.1f}",
                     "eval ex/s": f"{args.batch / lora_s:.0f}", "vs LoRA": "1.00x"})
        for n in args.experts:
            start = time.perf_counter()
            lib = Library(build(tmp / f"lib{n}", runs[:n]))
            built = time.perf_counter() - start
            lib.cached(GATES, lambda: random_gates(lib))  # what `mmpt.library gates` would store
            for ftype in types_of("lora"):
                times = []
                for _ in range(2):  # the first load computes prototypes / merges, the second reads the cache
                    start = time.perf_counter()
                    model, _ = prepare_library_model(lib, ftype, OPTS, get_task("cb"))
                    times.append(time.perf_counter() - start)
                model.eval()
                s = timeit(lambda: model.score(data), repeat=3, warmup=1)
                rows.append({"setting": ftype, "experts": n, "build s": f"{built:.1f}",
                             "first load s": f"{times[0]:.2f}", "cached load s": f"{times[1]:.2f}",
                             "adapter MB": f"{adapter_mb(model):.1f}", "eval ex/s": f"{args.batch / s:.0f}",
                             "vs LoRA": f"{lora_s / s:.2f}x"})
    print(f"library costs, {args.shape} shape (random weights), LoRA rank 8 on q, v; eval = rank scoring "
          f"of batch {args.batch}, source {args.source} tokens, 2 choices; {machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
