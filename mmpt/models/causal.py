"""The decoder-only wrapper (Llama / Mistral / Qwen2 / SmolLM / GPT-2 ...): text-to-text on a causal LM.

The source is the prompt and the verbalizer the continuation; the loss covers only continuation
tokens. Methods plug in exactly as on T5: `prepare` gives token ids or input embeddings (soft
prompts are prepended there), the mask, and optionally `mmpt_prefix`, whose keys and values join
every layer's self-attention through methods/prefix_attention.py (they carry no position: RoPE
has already rotated the real keys when the attention function sees them).

Prompt format (data/collate.py): the prompt is the source text without trailing whitespace,
after the tokenizer's leading special tokens (Llama's BOS) and without EOS; each choice is its
continuation after a space, tokenized as in running text, then EOS. So a prompt's ids followed by
a choice's are the ids of `prompt + " " + choice` (+ EOS), in training, rank scoring and generation.

Padding: prompts may be padded on either side, and the continuation is appended after the padded
prompt, so pads can sit in the middle. Position ids come from the attention mask (the real tokens
of every row are at 0..T-1 in order) and pads are masked, so padding never changes a score.

Rank scoring runs each prompt once with a key/value cache, expands the cache over the C choices
and scores all choices in one pass on top of it (not prompt + choice per choice).
"""
import sys

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mmpt.methods import prefix_attention
from mmpt.models.backbone import quiet
from mmpt.models.encoder import ENCODERS
from mmpt.models.family import FAMILIES, Family
from mmpt.models.seq2seq import TextToText

# Decoder-only model types: any with a causal-LM class in transformers, except encoders and T5.
CAUSAL_TYPES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(ENCODERS) - {"t5", "mt5"}


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a [B, L] 0/1 mask: the real tokens of each row get 0, 1, 2, ... in order."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last attended position of each row (left or right padding)."""
    return (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(1)


class CausalLM(TextToText):
    def _states(self, kw, **extra):
        """Last hidden states of the decoder stack (the LM head is applied only where needed)."""
        return self.backbone.base_model(**kw, **extra).last_hidden_state

    def _head(self, h):
        return self.backbone.get_output_embeddings()(h).float()

    def _append(self, kw, ids, valid):
        """kw with continuation ids [B, T] (valid: [B, T] bool) appended after the prompt."""
        out = dict(kw)
        if "inputs_embeds" in kw:  # soft prompts: the prompt is already embeddings
            embeds = self.backbone.get_input_embeddings()(ids)
            out["inputs_embeds"] = torch.cat([kw["inputs_embeds"], embeds.to(kw["inputs_embeds"].dtype)], 1)
        else:
            out["input_ids"] = torch.cat([kw["input_ids"], ids], 1)
        out["attention_mask"] = torch.cat([kw["attention_mask"], valid.to(kw["attention_mask"].dtype)], 1)
        out["position_ids"] = positions(out["attention_mask"])
        return out

    def continuation_logp(self, kw, targets):
        """[B, T] log-probability of each continuation token (0 at -100 pads), in one teacher-forced
        pass over prompt + continuation; kw: the method's backbone kwargs for the prompt."""
        valid = targets != -100
        ids = targets.clamp(min=0)
        s = kw["attention_mask"].shape[1]
        h = self._states(self._append(kw, ids, valid))
        # target t is predicted by the state before it: the prompt's last real token for t = 0
        b, t = targets.shape
        first = last_real(kw["attention_mask"])[:, None]
        rest = s + torch.arange(t - 1, device=h.device).expand(b, -1)
        idx = torch.cat([first, rest], 1)
        states = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
        logp = self._head(states).log_softmax(-1)
        return logp.gather(-1, ids[..., None]).squeeze(-1) * valid

    def forward(self, batch):
        """Mean cross-entropy over the gold continuation's tokens; also the method's diagnostics."""
        kw, aux = self.method.prepare(batch, self.backbone)
        with self._routing(batch):
            logp = self.continuation_logp(kw, batch["labels"])
        return -logp.sum() / (batch["labels"] != -100).sum().clamp(min=1), aux

    @torch.no_grad()
    def choice_tokens(self, batch):
        """([B, C, T] log-probability of every choice token (0 at pads), [B, C] whether each choice
        is the greedy continuation, aux): what `score` (TextToText) sums.

        The prompt runs once per example with a cache; the cache is repeated for the C choices,
        which are scored in one pass on top of it.
        """
        kw, aux = self.method.prepare(batch, self.backbone)
        prefix = kw.get("mmpt_prefix")
        mask = kw["attention_mask"]
        choices = batch["choice_ids"]
        b, c, t = choices.shape
        cache = DynamicCache(config=self.backbone.config)
        with self._routing(batch):
            h = self._states(kw, position_ids=positions(mask), cache=cache, use_cache=True)
        first = self._head(h[torch.arange(b, device=h.device), last_real(mask)]).log_softmax(-1)
        labels = choices.reshape(b * c, t)
        valid = labels != -100
        ids = labels.clamp(min=0)
        logp = first.repeat_interleave(c, 0)[:, None]  # [B*C, 1, V]: predicts choice token 0
        if t > 1:  # tokens 1.. are predicted by the states of tokens 0..t-2, run on the cache
            cache.batch_repeat_interleave(c)
            full = torch.cat([mask.repeat_interleave(c, 0), valid[:, :-1].to(mask.dtype)], 1)
            step = {"input_ids": ids[:, :-1], "attention_mask": full,
                    "position_ids": positions(full)[:, mask.shape[1]:], "cache": cache, "use_cache": True}
            if prefix is not None:
                step["mmpt_prefix"] = prefix.expand(c)
            with self._routing(batch, repeat=c):
                h = self._states(step)
            logp = torch.cat([logp, self._head(h).log_softmax(-1)], 1)
        tok = logp.gather(-1, ids[..., None]).squeeze(-1) * valid
        greedy = ((logp.argmax(-1) == ids) | ~valid).all(-1)
        return tok.view(b, c, t), greedy.view(b, c), aux

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int = 10):
        """Greedy decoding with a cache -> ([B, <=max_new_tokens] token ids, aux); pad after EOS."""
        kw, aux = self.method.prepare(batch, self.backbone)
        prefix = kw.get("mmpt_prefix")
        mask = kw["attention_mask"]
        b = mask.shape[0]
        cache = DynamicCache(config=self.backbone.config)
        out = mask.new_zeros(b, 0)
        done = torch.zeros(b, dtype=torch.bool, device=mask.device)
        with self._routing(batch):
            h = self._states(kw, position_ids=positions(mask), cache=cache, use_cache=True)
            h = h[torch.arange(b, device=h.device), last_real(mask)][:, None]
            for i in range(max_new_tokens):
                nxt = self._head(h[:, -1]).argmax(-1).masked_fill(done, self.pad_id)
                out = torch.cat([out, nxt[:, None]], 1)
                done |= nxt == self.eos_id
                if done.all() or i == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                step = {"input_ids": nxt[:, None], "attention_mask": mask,
                        "position_ids": positions(mask)[:, -1:], "cache": cache, "use_cache": True}
                if prefix is not None:
                    step["mmpt_prefix"] = prefix
                h = self._states(step)
        return out, aux


def _tiny_llama(cfg, tokenizer) -> LlamaForCausalLM:
    """Llama blocks (RoPE, grouped-query attention, gated MLP): also the Mistral / Qwen2 layout."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.d_model // cfg.num_heads,
        max_position_embeddings=cfg.max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, initializer_range=cfg.get("init_std", 0.02),
    )
    return LlamaForCausalLM(config)


def _tiny_gpt2(cfg, tokenizer) -> GPT2LMHeadModel:
    """GPT-2 blocks: learned positions, Conv1D layers (weights stored transposed), tied head."""
    p = cfg.get("dropout", 0.1)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=cfg.d_model, n_inner=cfg.d_ff, n_layer=cfg.num_layers,
        n_head=cfg.num_heads, n_positions=cfg.max_positions, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id, initializer_range=cfg.get("init_std", 0.02),
    )
    return GPT2LMHeadModel(config)


# Default adapter targets by module naming: Llama / Mistral / Qwen names, and GPT-2's Conv1D names.
LLAMA_TARGETS = {"lora": r".*self_attn\.(q_proj|v_proj)",
                 "poly": r".*self_attn\.(q|k|v|o)_proj",
                 "poly_ffn": r".*self_attn\.(q|k|v|o)_proj|.*mlp\.(gate|up|down)_proj",
                 "ia3": r".*self_attn\.(k_proj|v_proj)|.*mlp\.up_proj"}
GPT2_TARGETS = {"lora": r".*attn\.c_attn",
                "poly": r".*attn\.(c_attn|c_proj)",
                "poly_ffn": r".*attn\.(c_attn|c_proj)|.*mlp\.(c_fc|c_proj)",
                "ia3": r".*attn\.c_attn|.*mlp\.c_fc"}


@FAMILIES.register("causal", describe="decoder-only causal LMs", fallback=True)  # a family of one type goes first
class CausalFamily(Family):
    """Decoder-only LMs: the verbalizer is the prompt's continuation; prefixes in every layer."""
    name = "causal"
    can_generate = True
    peft_task_type = "CAUSAL_LM"
    tiny = {"llama_tiny": _tiny_llama, "gpt2_tiny": _tiny_gpt2}

    def matches(self, config) -> bool:
        return not config.is_encoder_decoder and config.model_type in CAUSAL_TYPES

    def load(self, name, **kwargs):
        with quiet(warnings=True):
            return AutoModelForCausalLM.from_pretrained(name, **{"dtype": torch.float32, **kwargs})

    def targets(self, config) -> dict:
        return GPT2_TARGETS if config.model_type == "gpt2" else LLAMA_TARGETS

    def attention_sites(self, backbone) -> list[str]:
        """Any module named *Attention that knows its layer index (the layout of every transformers
        decoder-only model) becomes site "decoder.<layer>"."""
        sites = []
        for _, module in backbone.named_modules():
            layer = getattr(module, "layer_idx", None)
            if type(module).__name__.endswith("Attention") and isinstance(layer, int):
                module.mmpt_site = f"decoder.{layer}"
                sites.append(module.mmpt_site)
        return sites

    def shapes(self, backbone) -> dict:
        """n_heads is the key/value head count (grouped-query attention has fewer than query heads):
        a prefix holds keys and values, which the attention function repeats over query groups."""
        c = backbone.config
        heads = c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        d_head = getattr(c, "head_dim", None) or c.hidden_size // heads
        return {"d_model": c.hidden_size, "n_heads": kv_heads, "n_query_heads": heads, "d_head": d_head,
                "layers": {"decoder": c.num_hidden_layers}}

    def rotary(self, backbone):
        rope = getattr(backbone.base_model, "rotary_emb", None)
        apply = getattr(sys.modules[type(backbone).__module__], "apply_rotary_pos_emb", None)
        return (rope, apply) if rope is not None and apply is not None else None

    def positions(self, backbone) -> str:
        return "rope" if self.rotary(backbone) is not None else "absolute"  # Llama-style or GPT-2

    def wrap(self, backbone, tokenizer, method, tasks, model_cfg) -> CausalLM:
        prefix_attention.enable(backbone)
        tokenizer.mmpt_prompts = True  # the data layer encodes sources as prompts, choices as continuations
        return CausalLM(backbone, tokenizer, method, self)
