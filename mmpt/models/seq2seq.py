"""The T5 wrapper every method plugs into: loss, rank scoring and greedy generation.

A method (mmpt/methods) turns a batch into the backbone's keyword arguments (`prepare`): token ids
or input embeddings, the attention mask, and optionally `mmpt_prefix` (per-layer prefixes). This
wrapper owns what is the same for every method.
"""
import inspect

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from mmpt.methods import prefix_attention
from mmpt.models.backbone import quiet
from mmpt.models.family import FAMILIES, Family

# transformers renamed the decoder cache argument `past_key_values` to `cache` (5.2x) and warns at
# every call with the old name: pass whichever name this version's T5 takes.
CACHE_ARG = "cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters \
    else "past_key_values"


class TextToText(nn.Module):
    """What every text-to-text wrapper (T5 here, causal LMs in causal.py) shares: the method's
    groups, the loss's token count and the method's routing context."""

    def __init__(self, backbone, tokenizer, method, family):
        super().__init__()
        self.backbone, self.method, self.family = backbone, method, family
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.tokenizer = tokenizer

    def param_groups(self) -> dict:
        return self.method.param_groups()

    def loss_terms(self, batch):
        """How many terms the mean loss averages (target tokens): DDP weights processes by it."""
        return (batch["labels"] != -100).sum()

    def _routing(self, batch, repeat: int = 1):
        return self.method.routing(batch, repeat)

    @torch.no_grad()
    def score(self, batch, length_norm: float = 0):
        """[B, C] summed log-likelihood of every choice; -inf where an example has fewer choices.
        length_norm > 0 divides each sum by (the choice's tokens, EOS included) ** length_norm.
        The family's `choice_tokens` gives the token log-probabilities (T5: one encoder pass per
        example; causal LMs: one prompt pass with a cache, repeated over the choices).
        """
        tok, _, aux = self.choice_tokens(batch)
        scores = tok.sum(-1)
        if length_norm:  # longer choices sum more negative terms (T-Few / MTTL's length_norm)
            valid = batch["choice_ids"] != -100
            scores = scores / valid.sum(-1).clamp(min=1).float() ** length_norm
        return scores.masked_fill(~batch["choice_mask"], float("-inf")), aux


class Seq2SeqModel(TextToText):

    def forward(self, batch):
        """Mean token cross-entropy of the gold targets; also returns the method's diagnostics."""
        kw, aux = self.method.prepare(batch, self.backbone)
        with self._routing(batch):
            out = self.backbone(**kw, labels=batch["labels"])
        return out.loss, aux

    @torch.no_grad()
    def choice_tokens(self, batch):
        """([B, C, T] log-probability of every choice token (0 at pads), [B, C] whether each choice
        is the greedy decoding, aux): what `score` sums.

        The encoder runs once per example; its states are repeated for the C choices, which the
        decoder scores in one teacher-forced pass.
        """
        kw, aux = self.method.prepare(batch, self.backbone)
        prefix = kw.pop("mmpt_prefix", None)
        choices = batch["choice_ids"]
        b, c, t = choices.shape
        with self._routing(batch):
            enc = self.backbone.get_encoder()(**kw, mmpt_prefix=prefix).last_hidden_state
        labels = choices.reshape(b * c, t)
        with self._routing(batch, repeat=c):
            logits = self.backbone(
                encoder_outputs=(enc.repeat_interleave(c, 0),),
                attention_mask=kw["attention_mask"].repeat_interleave(c, 0),
                decoder_input_ids=self.backbone.prepare_decoder_input_ids_from_labels(labels),
                mmpt_prefix=prefix.expand(c) if prefix is not None else None).logits
        logp = logits.float().log_softmax(-1)
        valid = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * valid
        greedy = ((logp.argmax(-1) == labels) | ~valid).all(-1)
        return tok.view(b, c, t), greedy.view(b, c), aux

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int = 10):
        """Greedy decoding -> ([B, <=max_new_tokens] token ids, aux); pad after EOS.

        Hand-written because transformers' `generate()` rejects the `mmpt_prefix` keyword.
        """
        kw, aux = self.method.prepare(batch, self.backbone)
        prefix = kw.pop("mmpt_prefix", None)
        b = kw["attention_mask"].shape[0]
        with self._routing(batch):
            enc = self.backbone.get_encoder()(**kw, mmpt_prefix=prefix)
            start = self.backbone.config.decoder_start_token_id
            out = torch.full((b, 1), start, dtype=torch.long, device=kw["attention_mask"].device)
            done = torch.zeros(b, dtype=torch.bool, device=out.device)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            for _ in range(max_new_tokens):
                # the cache is updated in place: the same object serves the next step
                step = self.backbone(encoder_outputs=enc, attention_mask=kw["attention_mask"],
                                     decoder_input_ids=out[:, -1:], use_cache=True, mmpt_prefix=prefix,
                                     **{CACHE_ARG: cache})
                nxt = step.logits[:, -1].argmax(-1).masked_fill(done, self.pad_id)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done |= nxt == self.eos_id
                if done.all():
                    break
        return out[:, 1:], aux


def _tiny_t5(cfg, tokenizer) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
        dropout_rate=cfg.get("dropout", 0.1), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return T5ForConditionalGeneration(config)


@FAMILIES.register("t5", describe="t5, mt5")
class T5Family(Family):
    """Encoder-decoder T5 models: text-to-text, relative position biases, prefixes in both stacks."""
    name = "t5"
    can_generate = True
    peft_task_type = "SEQ_2_SEQ_LM"

    def positions(self, backbone) -> str:
        return "relative"
    tiny = {"t5_tiny": _tiny_t5}

    def matches(self, config) -> bool:
        return config.model_type in ("t5", "mt5")

    def load(self, name, **kwargs):
        with quiet(warnings=True):
            return T5ForConditionalGeneration.from_pretrained(name, **{"dtype": torch.float32, **kwargs})

    def targets(self, config) -> dict:
        return {"lora": r".*(SelfAttention|EncDecAttention)\.(q|v)",
                "poly": r".*(SelfAttention|EncDecAttention)\.(q|k|v|o)",  # the MTTL seed's lora_layers
                "poly_ffn": r".*(SelfAttention|EncDecAttention)\.(q|k|v|o)|.*DenseReluDense\.w\w*",
                "ia3": r".*(SelfAttention|EncDecAttention)\.(k|v)|.*DenseReluDense\.(wi|wi_1)"}

    def attention_sites(self, backbone) -> list[str]:
        sites = []
        for stack in ("encoder", "decoder"):
            for i, block in enumerate(getattr(backbone, stack).block):
                block.layer[0].SelfAttention.mmpt_site = f"{stack}.{i}"
                sites.append(f"{stack}.{i}")
        return sites

    def shapes(self, backbone) -> dict:
        c = backbone.config
        return {"d_model": c.d_model, "n_heads": c.num_heads, "d_head": c.d_kv,
                "layers": {"encoder": c.num_layers, "decoder": c.num_decoder_layers}}

    def wrap(self, backbone, tokenizer, method, tasks, model_cfg) -> Seq2SeqModel:
        prefix_attention.enable(backbone)
        return Seq2SeqModel(backbone, tokenizer, method, self)
