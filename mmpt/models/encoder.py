"""The encoder-only wrapper (BERT / RoBERTa family, e.g. all-MiniLM-L6-v2): one head per task.

Methods plug in exactly as on T5: `prepare` gives token ids or input embeddings, the mask, and
optionally `mmpt_prefix`; prefixes reach the encoder's self-attention through the same attention
function. The states are mean-pooled over the attended positions (how MiniLM was trained), the
soft-prompt positions a method prepends included or not (`model.pool_prompt`), and fed to the
task's head: a linear classifier over its verbalizers, or a scalar regressor for tasks
marked `regression` (STS-B), trained with MSE on the score.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from mmpt.errors import ConfigError
from mmpt.methods import prefix_attention


def tag_sites(model) -> list[str]:
    """Tag each layer's self-attention with its prefix site ("encoder.<i>")."""
    sites = []
    for i, layer in enumerate(model.encoder.layer):
        layer.attention.self.mmpt_site = f"encoder.{i}"
        sites.append(f"encoder.{i}")
    return sites


def shapes(model) -> dict:
    c = model.config
    return {"d_model": c.hidden_size, "n_heads": c.num_attention_heads,
            "d_head": c.hidden_size // c.num_attention_heads,
            "layers": {"encoder": c.num_hidden_layers}}


class EncoderClassifier(nn.Module):
    can_generate = False  # heads over pooled states: nothing to decode (eval_mode=rank only)
    def __init__(self, backbone, tokenizer, method, tasks, pool_prompt: bool = False):
        super().__init__()
        self.backbone, self.method, self.tokenizer = backbone, method, tokenizer
        self.pool_prompt = pool_prompt
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        d = backbone.config.hidden_size
        self.regression = [bool(getattr(t, "regression", False)) for t in tasks]
        self.values = [torch.tensor([float(v) for v in t.verbalizers]) if r else None
                       for t, r in zip(tasks, self.regression)]
        self.heads = nn.ModuleList(nn.Linear(d, 1 if r else len(t.verbalizers))
                                   for t, r in zip(tasks, self.regression))
        self.head_of = {i: i for i in range(len(tasks))}  # task id -> head

    def add_head(self, task, task_id: int) -> list:
        """A fresh head for `task`, used by examples with `task_id` (fine-tuning on a new task);
        returns its parameters."""
        regression = bool(getattr(task, "regression", False))
        d = self.backbone.config.hidden_size
        head = nn.Linear(d, 1 if regression else len(task.verbalizers)).to(self.backbone.device)
        self.heads.append(head)
        self.regression.append(regression)
        self.values.append(torch.tensor([float(v) for v in task.verbalizers]) if regression else None)
        self.head_of[task_id] = len(self.heads) - 1
        return list(head.parameters())

    def param_groups(self) -> dict:
        return {**self.method.param_groups(), "head": list(self.heads.parameters())}

    def loss_terms(self, batch):
        """How many terms the mean loss averages (examples): DDP weights processes by it."""
        return batch["label"].new_tensor(len(batch["label"]))

    def _pooled(self, batch):
        kw, aux = self.method.prepare(batch, self.backbone)
        routing = getattr(self.method, "routing", None)
        with routing(batch, 1) if routing else nullcontext():
            h = self.backbone(**kw).last_hidden_state
        mask = kw["attention_mask"].clone()
        if not self.pool_prompt:  # the positions the method prepended (soft prompts) stay out of the mean
            mask[:, : mask.shape[1] - batch["attention_mask"].shape[1]] = 0
        mask = mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1), aux

    def _by_head(self, pooled, task_id):
        """(head index, positions in the batch, that head's outputs) for each head the batch uses:
        one Linear call per head, not per example."""
        heads = torch.tensor([self.head_of[t] for t in task_id.tolist()], device=pooled.device)
        for h in heads.unique().tolist():
            idx = (heads == h).nonzero().squeeze(1)
            yield h, idx, self.heads[h](pooled[idx])

    def score(self, batch):
        """[B, C] choice scores: logits, or -|score - value| (the nearest value wins) for regression."""
        pooled, aux = self._pooled(batch)
        scores = torch.full(batch["choice_mask"].shape, float("-inf"), device=pooled.device)
        for h, idx, out in self._by_head(pooled, batch["task_id"]):
            if self.regression[h]:
                out = -(out - self.values[h].to(out.device)).abs()  # [n, 1] against [V] values
            scores[idx, : out.shape[-1]] = out.float()
        return scores, aux

    def forward(self, batch):
        """Mean over the batch of each example's loss: cross-entropy, or MSE on the score."""
        pooled, aux = self._pooled(batch)
        labels, total = batch["label"], 0.0
        for h, idx, out in self._by_head(pooled, batch["task_id"]):
            if self.regression[h]:  # the exact score, not the label (the score rounded to 0.2)
                target = batch["value"][idx].to(out.device, torch.float)
                total = total + F.mse_loss(out.squeeze(-1).float(), target, reduction="sum")
            else:
                total = total + F.cross_entropy(out.float(), labels[idx], reduction="sum")
        return total / len(labels), aux

    def generate(self, batch, max_new_tokens: int = 10):
        raise ConfigError("trainer.eval_mode", "encoder backbones have no decoder: use trainer.eval_mode=rank")


def wrap(backbone, tokenizer, method, tasks, pool_prompt: bool = False) -> EncoderClassifier:
    if not isinstance(pool_prompt, bool):
        raise ConfigError("model.pool_prompt", f"expected true or false, got {pool_prompt!r}")
    prefix_attention.enable(backbone)
    return EncoderClassifier(backbone, tokenizer, method, tasks, pool_prompt)
