"""Shared helpers for the benchmarks: T5 shapes with random weights, timing, markdown tables."""
import platform
import statistics
import time

import torch
from omegaconf import OmegaConf
from transformers import T5Config, T5ForConditionalGeneration

SHAPES = {  # the public configs of t5-small and t5-base (random weights: only speed matters)
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
}


def t5(shape: str, vocab: int = 32128) -> T5ForConditionalGeneration:
    cfg = T5Config(vocab_size=vocab, num_decoder_layers=SHAPES[shape]["num_layers"], dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **SHAPES[shape])
    torch.manual_seed(0)
    return T5ForConditionalGeneration(cfg)


def model_cfg(shape: str):
    """A conf/model-style config building this shape through mmpt's t5_tiny path."""
    return OmegaConf.create({"build": "t5_tiny", "name_or_path": None, "tokenizer": None, "dropout": 0.0,
                             "init_seed": 0, **SHAPES[shape]})


def timeit(fn, repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(out)
