"""PhatGOOSE gate training: `python -m mmpt.library gates LIB` (mttl's PhatgooseTransform).

Once per expert, on the expert's own run (its best weights, from the `source` folder the index
names) and its own training task: every adapted layer gets a gate vector v (zero-initialised),
and the expert's LoRA output of a token x is scaled by sigmoid(x . v). Only the gates train (AdamW,
no weight decay, linear warmup then decay), everything else stays frozen. The gates of all experts
go into the library's cache (phatgoose.GATES), where finetune_type=phatgoose reads them.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from transformers import get_linear_schedule_with_warmup, set_seed

from mmpt import distributed
from mmpt.engine import progress
from mmpt.engine.evaluate import to_device
from mmpt.errors import MMPTError
from mmpt.library.phatgoose import GATES
from mmpt.library.store import LibraryError, who
from mmpt.methods.adapters import LoRALinear, Wrapped
from mmpt.recipes.common import load_data
from mmpt.runs import load_model, open_run

LOSS = "loss"  # train_gates' last training loss, beside the gates


@dataclass
class GateOptions:
    """mttl's PhatgooseConfig / phatgoose training defaults."""
    steps: int = 100
    lr: float = 1e-3
    warmup: float = 0.1      # share of the steps with a linear warmup
    batch_size: int = 4
    seed: int = 42


class GatedLoRA(Wrapped):
    """y = W x + sigmoid(x . v) * (alpha / r) B A x: a trained LoRA layer behind a per-token gate."""

    def __init__(self, lora: LoRALinear):
        super().__init__()
        self.lora = lora
        self.v = nn.Parameter(torch.zeros(1, lora.lora_A.shape[1], device=lora.lora_A.device))

    def forward(self, x):
        y = self.lora.base(x)
        gate = torch.sigmoid(x.to(self.v.dtype) @ self.v.T)  # [..., 1]
        delta = self.lora.dropout(x.to(self.lora.lora_A.dtype)) @ self.lora.lora_A.T @ self.lora.lora_B.T
        return y + (gate * self.lora.scale * delta).to(y.dtype)


def open_expert(lib, row: dict, opts: GateOptions):
    """(run model, its training data) of an expert, or one line naming the expert and what is gone."""
    if row.get("method") != "lora":
        raise LibraryError(f"{who(row['name'], row)} is a {row.get('method')} expert; PhatGOOSE gates are "
                           "trained for the lora experts of one run each")
    if not Path(row["source"]).is_dir():
        raise LibraryError(f"{who(row['name'], row)}: its run folder {row['source']} is gone; gates train on "
                           "the expert's run and task")
    try:
        run = open_run(row["source"], "PhatGOOSE gates")
        cfg = OmegaConf.create(OmegaConf.to_container(run.cfg, resolve=False))
        with open_dict(cfg):
            cfg.trainer.batch_size = opts.batch_size
        model = load_model(run)
        data = load_data(cfg, model.tokenizer, run.cfg.seed)  # the expert's own (k-shot) training split
    except MMPTError as e:
        raise LibraryError(f"{who(row['name'], row)}: its task data cannot be loaded ({e})") from None
    data.seed = opts.seed  # the batch order of gate training
    return model, data


def add_gates(model, targets: list) -> dict:
    """Wrap each target LoRALinear of the run's backbone in a GatedLoRA; {module: gate v}."""
    model.requires_grad_(False)
    gates = {}
    for name in targets:
        lora = model.backbone.get_submodule(name)
        if not isinstance(lora, LoRALinear):
            raise LibraryError(f"`{name}` of the expert's run is not a LoRA layer")
        gated = GatedLoRA(lora)
        parent, _, child = name.rpartition(".")
        setattr(model.backbone.get_submodule(parent) if parent else model.backbone, child, gated)
        gates[name] = gated.v
    return gates


def train_gates(model, data, targets: list, opts: GateOptions) -> dict:
    """{module: v [d_in]} after opts.steps steps on `data`'s training split (and LOSS: the last loss)."""
    set_seed(opts.seed)
    gates = add_gates(model, targets)
    device = distributed.device()
    model.to(device).train()
    optim = torch.optim.AdamW(list(gates.values()), lr=opts.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(optim, int(opts.warmup * opts.steps), opts.steps)
    step, epoch = 0, 0
    while step < opts.steps:
        for batch in data.loader("train", epoch):
            loss, _ = model(to_device(batch, device))
            loss.backward()
            optim.step()
            sched.step()
            optim.zero_grad()
            step += 1
            if step >= opts.steps:
                break
        epoch += 1
    return {**{m: v.detach().float().cpu().view(-1) for m, v in gates.items()}, LOSS: loss.item()}


def expert_bar(total: int):
    """A bar on a terminal; otherwise one line on stderr per expert trained (not throttled)."""
    if sys.stderr.isatty() or not distributed.is_main():
        return progress.bar(total, "phatgoose gates", enabled=distributed.is_main())
    return progress.Lines(total, "phatgoose gates", emit=lambda text: print(text, file=sys.stderr, flush=True),
                          interval_s=0, fraction=0)


def library_gates(lib, opts: GateOptions = GateOptions()) -> dict:
    """Train every expert's gates ({module: [E, d_in]}) and store them in the library's cache.
    Every expert's run and data are checked before any training (a missing one: nothing written)."""
    if lib.kind != "lora":
        raise LibraryError(f"library {lib.path} holds {lib.kind} experts; PhatGOOSE gates are for LoRA experts")
    for row in lib.experts:
        open_expert(lib, row, opts)
    per = []
    with expert_bar(len(lib.names)) as bar:
        for row in lib.experts:
            bar.set_postfix(expert=row["name"])
            model, data = open_expert(lib, row, opts)
            per.append(train_gates(model, data, lib.compat["targets"], opts))
            bar.set_postfix(expert=row["name"], loss=f"{per[-1].pop(LOSS):.3f}")
            bar.update(1)
    gates = {m: torch.stack([p[m] for p in per]) for m in lib.compat["targets"]}
    return lib.cached(GATES, lambda: gates)
