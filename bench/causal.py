"""Decoder-only benchmarks (docs/benchmarks.md, "Causal LMs"), on a Llama shape of about 100M
parameters with random weights:

  A. rank scoring of a 4-choice task (256-token prompts, 1-3 token choices): the shared prompt cache
     (CausalLM.score) vs prompt + choice for every choice (all B x C rows in one batched pass);
  B. a training step of prefix, prompt tuning and LoRA vs PEFT's on the same backbone and batch.

    python bench/causal.py [--threads 2] [--batch 4] [--prompt 256] [--source 128] [--repeat 3]
"""
import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, table, timeit  # noqa: E402
from mmpt.models import build_model, load_backbone  # noqa: E402

# ~100M parameters: 8 Llama blocks of width 768 (12 query / 4 key-value heads), 30,522 tokens
SHAPE = dict(build="llama_tiny", name_or_path=None, tokenizer=None, d_model=768, d_ff=2048, num_layers=8,
             num_heads=12, num_kv_heads=4, max_positions=1024, init_seed=0)
METHODS = {
    "prefix": dict(name="prefix", num_virtual_tokens=10, placement="both", init_std=1.0),
    "prompt_tuning": dict(name="prompt_tuning", num_virtual_tokens=10, init="vocab"),
    "lora": dict(name="lora", rank=8, alpha=16, dropout=0.0, target_modules=r".*self_attn\.(q_proj|v_proj)"),
}


def peft_config(name):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if name == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)
    if name == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj"])


def make_batch(b, s, choice_lengths, vocab=30522, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (b, s), generator=g)
    c, t = len(choice_lengths), max(choice_lengths)
    choice_ids = torch.full((b, c, t), -100)
    for i, n in enumerate(choice_lengths):
        choice_ids[:, i, :n] = torch.randint(1000, vocab, (b, n), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "choice_ids": choice_ids,
            "choice_mask": torch.ones(b, c, dtype=torch.bool), "labels": choice_ids[:, 0].clone(),
            "label": torch.zeros(b, dtype=torch.long), "task_id": torch.zeros(b, dtype=torch.long),
            "index": torch.arange(b)}


def build(name):
    torch.manual_seed(0)
    return build_model(OmegaConf.create(SHAPE), OmegaConf.create(METHODS[name]))


@torch.no_grad()
def naive_scores(model, batch):
    """Prompt + choice for every choice: B x C full sequences, one batched teacher-forced pass."""
    kw, _ = model.method.prepare(batch, model.backbone)
    b, c, t = batch["choice_ids"].shape
    rep = {k: (v.expand(c) if k == "mmpt_prefix" else v.repeat_interleave(c, 0)) for k, v in kw.items()}
    return model.continuation_logp(rep, batch["choice_ids"].reshape(b * c, t)).sum(-1).view(b, c)


def bench_rank(args):
    model = build("prefix").eval()
    batch = make_batch(args.batch, args.prompt, [1, 2, 3, 2])
    cached, naive = model.score(batch)[0], naive_scores(model, batch)
    diff = (cached - naive).abs().max().item()
    t_cached = timeit(lambda: model.score(batch), repeat=args.repeat, warmup=1)
    t_naive = timeit(lambda: naive_scores(model, batch), repeat=args.repeat, warmup=1)
    n = sum(p.numel() for p in model.backbone.parameters())
    return {"measure": f"rank scoring, {args.batch} x 4 choices, prompt {args.prompt}, choices 1-3 tokens "
                       f"({n / 1e6:.0f}M params, prefix 10)",
            "mmpt": f"{t_cached:.3f} s (shared prompt cache)",
            "alternative": f"{t_naive:.3f} s (prompt + choice per choice)",
            "ratio": f"{t_naive / t_cached:.2f}x faster", "max |score diff|": f"{diff:.1e}"}


def train_step(model, params, loss_of):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss_of(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_train(name, args):
    from peft import get_peft_model

    batch = make_batch(args.batch, args.source, [4])
    ours = build(name)
    ours_params = [p for ps in ours.param_groups().values() for p in ps]
    backbone, _ = load_backbone(OmegaConf.create(SHAPE))
    theirs = get_peft_model(backbone, peft_config(name))
    ids = torch.cat([batch["input_ids"], batch["labels"]], 1)
    labels = torch.cat([torch.full_like(batch["input_ids"], -100), batch["labels"]], 1)
    peft_kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    mine = train_step(ours, ours_params, lambda m: m(batch)[0])
    peft_params = [p for p in theirs.parameters() if p.requires_grad]
    peft = train_step(theirs, peft_params, lambda m: m(**peft_kw).loss)
    t_mine, t_peft = [], []
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        t_mine.append(timeit(mine, repeat=1, warmup=1))
        t_peft.append(timeit(peft, repeat=1, warmup=1))
    a, b = sorted(t_mine)[len(t_mine) // 2], sorted(t_peft)[len(t_peft) // 2]
    return {"measure": f"{name} training step, batch {args.batch}, source {args.source}, target 4",
            "mmpt": f"{a:.3f} s", "alternative": f"{b:.3f} s (PEFT)", "ratio": f"{a / b:.2f}x PEFT's time",
            "max |score diff|": "-"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--source", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["rank", "train"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.only in (None, "rank"):
        rows.append(bench_rank(args))
    if args.only in (None, "train"):
        rows += [bench_train(name, args) for name in METHODS]
    print(f"machine: {machine()}")
    print(table(rows))


if __name__ == "__main__":
    main()
