"""Prompt tuning (Lester et al. 2021): soft tokens prepended to the encoder input embeddings.

`per_task: true` keeps one prompt per task id ([n_tasks, P, d]) and gives each example of a
mixed-task batch its own task's prompt (mmpt/methods/per_task.py).
"""
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.errors import ConfigError
from mmpt.methods.base import METHODS, Method, positive
from mmpt.methods.per_task import new_task_id, per_task_rows, select_rows


def prepend(embeds, mask, prompt):
    """Prepend prompt [B or 1, P, d] to embeds [B, S, d] and extend the mask with ones."""
    b = embeds.shape[0]
    prompt = prompt.to(embeds.dtype).expand(b, -1, -1)
    ones = mask.new_ones(b, prompt.shape[1])
    return torch.cat([prompt, embeds], 1), torch.cat([ones, mask], 1)


COMMON = 5000  # Lester et al. copy embeddings of the 5,000 most common tokens


def word_ids(tokenizer, rows: int, limit: int = COMMON) -> torch.Tensor:
    """The first `limit` ids (below `rows`, the embedding size) whose token is a plain word: not a
    special or added token, and decoding to ASCII letters only. That leaves out BERT's [unused*]
    and [CLS]-style tokens, T5's <extra_id_*>, punctuation, digits and WordPiece's "##" pieces.
    Both vocabulary kinds list frequent tokens first (SentencePiece by score; WordPiece's words
    after its reserved and single-character block), so the first ids are the common ones."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    end, found = min(len(tokenizer), rows), []
    for start in range(0, end, limit):  # decode a chunk at a time: `limit` words come early
        ids = [i for i in range(start, min(start + limit, end)) if i not in special]
        texts = [t.strip() for t in tokenizer.batch_decode([[i] for i in ids])]
        found += [i for i, t in zip(ids, texts) if t.isascii() and t.isalpha()]
        if len(found) >= limit:
            break
    if not found:
        raise ConfigError("method.init", "the tokenizer has no plain word tokens to copy; use init=normal")
    return torch.tensor(found[:limit])


def init_tokens(n: int, embedding: nn.Embedding, how: str, tokenizer=None, generator=None) -> torch.Tensor:
    """Initial soft tokens: copies of the embeddings of random common words (Lester et al.; drawn
    from the global RNG, i.e. the run's seed) or N(0, 1)."""
    if how == "vocab":
        words = word_ids(tokenizer, embedding.num_embeddings)
        ids = words[torch.randint(0, len(words), (n,), generator=generator)]
        return embedding.weight[ids].detach().clone()
    if how == "normal":
        return torch.randn(n, embedding.embedding_dim, generator=generator)
    raise ConfigError("method.init", f"expected 'vocab' or 'normal', got {how!r}")


@dataclass
class PromptTuningConfig:
    """Option names and types; defaults and comments: conf/method/prompt_tuning.yaml."""
    name: str
    num_virtual_tokens: int
    init: str
    per_task: bool


@METHODS.register("prompt_tuning", config=PromptTuningConfig)
class PromptTuning(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        n = positive(cfg, "num_virtual_tokens")
        self.per_task = per_task_rows(cfg, info)  # None: one prompt shared by every task
        rows = self.per_task or 1
        tokens = init_tokens(n * rows, backbone.get_input_embeddings(), cfg.get("init", "vocab"),
                             info.get("tokenizer"))
        # [P, d] (the single-prompt layout every earlier checkpoint has) or [n_tasks, P, d]
        self.prompt = nn.Parameter(tokens.view(rows, n, -1) if self.per_task else tokens)

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        prompt = select_rows(self.prompt, batch) if self.per_task else self.prompt[None]
        embeds, mask = prepend(embeds, batch["attention_mask"], prompt)
        return {"inputs_embeds": embeds, "attention_mask": mask}, {}

    def param_groups(self):
        return {"prompt": [self.prompt]}

    def add_task(self) -> int:
        return new_task_id(self)
