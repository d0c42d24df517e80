"""Token ids for a split (`EncodedSplit`) and dynamic padding of a batch (`collate`)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmpt.data.base import Example
from mmpt.errors import ConfigError

IGNORE = -100  # target padding: ignored by cross-entropy, and marks "no token" in choice_ids


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, at most max_length - 1 of them, then EOS: truncation never drops
    EOS, which T5 needs to see where the source ends."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length - 1)
    return [list(x) + [tokenizer.eos_token_id] for x in ids["input_ids"]]


# A word that every vocabulary keeps whole: choices are tokenized as the continuation of a word.
ANCHOR = "a"


def is_prompt_format(tokenizer) -> bool:
    """Set by models/causal.py on a causal LM's tokenizer: sources are encoded as prompts and
    choices as their continuations (`encode_sources`, `encode_choices`)."""
    return getattr(tokenizer, "mmpt_prompts", False)


def leading_specials(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text and nothing after (Llama's BOS; none
    for GPT-2 or Qwen); [] for a tokenizer that also adds some at the end (BERT's [CLS] .. [SEP])."""
    full = tokenizer(ANCHOR)["input_ids"]
    plain = tokenizer(ANCHOR, add_special_tokens=False)["input_ids"]
    n = len(full) - len(plain)
    return list(full[:n]) if full[n:] == plain else []


def encode_sources(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """A source is what the model reads before the answer. T5: the text, then EOS. A causal LM's
    prompt: the tokenizer's leading special tokens, the text without trailing whitespace, and no
    EOS (the answer continues the text; an EOS would end the document before it)."""
    if not is_prompt_format(tokenizer):
        return encode(tokenizer, texts, max_length)
    lead = leading_specials(tokenizer)
    if not texts:
        return []
    ids = tokenizer([t.rstrip() for t in texts], add_special_tokens=False, truncation=True,
                    max_length=max_length - len(lead))["input_ids"]
    return [lead + list(x) for x in ids]


def encode_choices(tokenizer, choices: list[str], max_length: int) -> list[list[int]]:
    """The answer choices, each ending in EOS. For a causal LM each is the continuation of the
    prompt after a space: the ids of "a <choice>" past those of "a". So prompt ids + choice ids
    are the ids of `prompt + " " + choice` (no tokenizer merges across a word boundary), with
    BPE's own tokens for " yes" (not "yes") and SentencePiece's word-start mark as in running text."""
    if not is_prompt_format(tokenizer) or not choices:
        return encode(tokenizer, choices, max_length)
    skip = len(tokenizer(ANCHOR, add_special_tokens=False)["input_ids"])
    ids = tokenizer([f"{ANCHOR} {c.strip()}" for c in choices], add_special_tokens=False)["input_ids"]
    return [list(x[skip:])[:max_length - 1] + [tokenizer.eos_token_id] for x in ids]


class EncodedSplit(Dataset):
    """Examples tokenized once, up front. Items are dicts: input_ids (list), choices (token ids
    of every verbalizer; per item, so that tasks with different choice sets can be mixed),
    label, value (the exact score of a regression task, else None), task_id, index (position in
    `examples`)."""

    def __init__(self, examples: list[Example], tokenizer, max_length: int, verbalizers: list[str],
                 max_target_length: int = 16, task_id: int = 0):
        if max_length < 2 or max_target_length < 2:
            raise ConfigError("dataset.max_length", "source and target lengths must be >= 2 "
                              f"(a token and EOS), got {max_length} and {max_target_length}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("model", "the tokenizer has no eos_token; sources must end with one")
        bad = [ex.id for ex in examples if not 0 <= ex.label < len(verbalizers)]
        if bad:
            raise ValueError(f"labels outside the {len(verbalizers)} verbalizers, e.g. example {bad[0]}")
        self.examples, self.verbalizers, self.task_id = examples, verbalizers, task_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.input_ids = encode_sources(tokenizer, [ex.text for ex in examples], max_length)
        self.choices = encode_choices(tokenizer, verbalizers, max_target_length)
        self.lengths = [len(x) for x in self.input_ids]  # for length bucketing

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "choices": self.choices,
                "label": self.examples[i].label, "value": self.examples[i].value, "task_id": self.task_id,
                "index": i}


def collate(items: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest source / target / choice count of this batch (not a global max)."""
    B = len(items)
    S = max(len(it["input_ids"]) for it in items)
    C = max(len(it["choices"]) for it in items)
    T = max(len(c) for it in items for c in it["choices"])
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, S), dtype=torch.long)
    choice_ids = torch.full((B, C, T), IGNORE, dtype=torch.long)
    choice_mask = torch.zeros((B, C), dtype=torch.bool)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[b, :n] = torch.tensor(it["input_ids"])
        attention_mask[b, :n] = 1
        for c, ids in enumerate(it["choices"]):
            choice_ids[b, c, :len(ids)] = torch.tensor(ids)
            choice_mask[b, c] = True
    label = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": choice_ids[torch.arange(B), label].clone(),  # the gold choice's target ids
        "choice_ids": choice_ids,
        "choice_mask": choice_mask,
        "label": label,
        # the exact score (STS-B), which regression heads train on; NaN for classification examples
        "value": torch.tensor([float("nan") if it.get("value") is None else it["value"] for it in items]),
        "task_id": torch.tensor([it["task_id"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
