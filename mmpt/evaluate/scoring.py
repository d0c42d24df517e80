"""Batched scoring of lm-eval's requests on an mmpt model, with shared contexts.

lm-eval asks a multiple-choice question as one loglikelihood request per choice, all with the
same context. Here requests are grouped by context: each context runs once and all its
continuations are scored on top of it, by the model's own rank scoring (`choice_tokens`: on a
causal LM the prompt's key/value cache is repeated over the continuations; on T5 the encoder runs
once). Contexts are batched by length. The batch is what mmpt's data layer gives the model
(mmpt/data/collate.py), so every method's `prepare` and routing see what they see in training.
"""
import torch

from mmpt.data.collate import IGNORE
from mmpt.engine import progress


def make_batch(contexts: list[list[int]], continuations: list[list[list[int]]], task_id: int, pad_id: int) -> dict:
    """The collate() batch of contexts (right-padded) and their continuations as choices."""
    b = len(contexts)
    s = max(len(x) for x in contexts)
    c = max(len(x) for x in continuations)
    t = max(len(y) for x in continuations for y in x)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros((b, s), dtype=torch.long)
    choice_ids = torch.full((b, c, t), IGNORE, dtype=torch.long)
    choice_mask = torch.zeros((b, c), dtype=torch.bool)
    for i, (ctx, conts) in enumerate(zip(contexts, continuations)):
        input_ids[i, :len(ctx)] = torch.tensor(ctx)
        mask[i, :len(ctx)] = 1
        for j, ids in enumerate(conts):
            choice_ids[i, j, :len(ids)] = torch.tensor(ids)
            choice_mask[i, j] = True
    return {"input_ids": input_ids, "attention_mask": mask, "choice_ids": choice_ids, "choice_mask": choice_mask,
            "labels": choice_ids[:, 0].clone(), "label": torch.zeros(b, dtype=torch.long),
            "value": torch.full((b,), float("nan")), "task_id": torch.full((b,), task_id, dtype=torch.long),
            "index": torch.arange(b)}


def batches(order: list, size: int, cost) -> list[list]:
    """Consecutive groups of `order` holding at most `size` items and `cost` tokens (a long
    rolling window gets a batch of its own rather than a [B, T, vocab] tensor of gigabytes)."""
    out, cur, budget = [], [], 0
    for item in order:
        if cur and (len(cur) >= size or budget + cost(item) > size * 2048):
            out.append(cur)
            cur, budget = [], 0
        cur.append(item)
        budget += cost(item)
    return out + ([cur] if cur else [])


@torch.no_grad()
def score(model, pairs: list[tuple[list[int], list[int]]], batch_size: int, task_id: int = 0,
          desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """(summed log-likelihood, greedy?) of each (context ids, continuation ids) pair, in order."""
    groups: dict[tuple, list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault(tuple(ctx), []).append(i)
    keys = sorted(groups, key=len, reverse=True)  # longest first: out-of-memory shows at once
    cost = lambda k: len(k) + sum(len(pairs[i][1]) for i in groups[k])  # noqa: E731
    device = next(model.parameters()).device
    pad = model.pad_id if model.pad_id is not None else 0
    out: list = [None] * len(pairs)
    chunks = batches(keys, batch_size, cost)
    bar = progress.bar(len(chunks), desc, leave=False)
    for chunk in chunks:
        conts = [[pairs[i][1] for i in groups[k]] for k in chunk]
        batch = make_batch([list(k) for k in chunk], conts, task_id, pad)
        tok, greedy, _ = model.choice_tokens({k: v.to(device) for k, v in batch.items()})
        sums = tok.sum(-1).tolist()
        greedy = greedy.tolist()
        for row, key in enumerate(chunk):
            for j, i in enumerate(groups[key]):
                out[i] = (sums[row][j], bool(greedy[row][j]))
        bar.update(1)
    bar.close()
    return out


@torch.no_grad()
def generate(model, contexts: list[list[int]], max_new_tokens: int, batch_size: int, task_id: int = 0) -> list[list[int]]:
    """Greedy continuation token ids of each context (the model's own decoding loop)."""
    device = next(model.parameters()).device
    pad = model.pad_id if model.pad_id is not None else 0
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    out: list = [None] * len(contexts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = make_batch([contexts[i] for i in idx], [[[pad]]] * len(idx), task_id, pad)
        ids, _ = model.generate({k: v.to(device) for k, v in batch.items()}, max_new_tokens)
        for row, i in enumerate(idx):
            out[i] = ids[row].tolist()
    return out
