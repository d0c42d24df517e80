"""Prompt tuning (Lester et al. 2021): soft tokens prepended to the encoder input embeddings."""
import torch
from torch import nn

from mmpt.errors import ConfigError
from mmpt.export.mapping import PeftMapping, Slot
from mmpt.methods.base import Method, positive


def prepend(embeds, mask, prompt):
    """Prepend prompt [B or 1, P, d] to embeds [B, S, d] and extend the mask with ones."""
    b = embeds.shape[0]
    prompt = prompt.to(embeds.dtype).expand(b, -1, -1)
    ones = mask.new_ones(b, prompt.shape[1])
    return torch.cat([prompt, embeds], 1), torch.cat([ones, mask], 1)


def init_tokens(n: int, embedding: nn.Embedding, how: str, generator=None) -> torch.Tensor:
    """Initial soft tokens: copies of random vocabulary embeddings (Lester et al.) or N(0, 1)."""
    if how == "vocab":
        ids = torch.randint(0, min(5000, embedding.num_embeddings), (n,), generator=generator)
        return embedding.weight[ids].detach().clone()
    if how == "normal":
        return torch.randn(n, embedding.embedding_dim, generator=generator)
    raise ConfigError("method.init", f"expected 'vocab' or 'normal', got {how!r}")


class PromptTuning(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        n = positive(cfg, "num_virtual_tokens")
        self.prompt = nn.Parameter(init_tokens(n, backbone.get_input_embeddings(), cfg.get("init", "vocab")))

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        embeds, mask = prepend(embeds, batch["attention_mask"], self.prompt[None])
        return {"inputs_embeds": embeds, "attention_mask": mask}, {}

    def param_groups(self):
        return {"prompt": [self.prompt]}

    def peft_mapping(self):
        # num_transformer_submodules=1: the prompt goes before the encoder input only (PEFT's
        # seq2seq default of 2 would also prepend a second prompt to the decoder input).
        n, d = self.prompt.shape
        config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": n, "token_dim": d,
                  "num_transformer_submodules": 1}
        return PeftMapping(config, {"prompt_embeddings": Slot(self.prompt)})
