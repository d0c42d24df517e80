"""OPT (Zhang et al. 2022): decoder-only, learned positions, biased Linears named q/k/v/out_proj and
fc1/fc2. The causal family's wrapper runs it; this family gives OPT's module names as the default
adapter targets and builds `opt_tiny` in-process."""
from transformers import OPTConfig, OPTForCausalLM

from mmpt.models.causal import CausalFamily
from mmpt.models.family import FAMILIES


def _tiny_opt(cfg, tokenizer) -> OPTForCausalLM:
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, word_embed_proj_dim=cfg.d_model, ffn_dim=cfg.d_ff,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions, dropout=cfg.dropout, attention_dropout=cfg.dropout,
        init_std=cfg.init_std, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return OPTForCausalLM(config)


@FAMILIES.register("opt", describe="OPT")
class OPTFamily(CausalFamily):
    name = "opt"
    tiny = {"opt_tiny": _tiny_opt}

    def matches(self, config) -> bool:
        return config.model_type == "opt"

    def targets(self, config) -> dict:
        return {"lora": r".*self_attn\.(q_proj|v_proj)",
                "poly": r".*self_attn\.(q|k|v|out)_proj",
                "poly_ffn": r".*self_attn\.(q|k|v|out)_proj|.*\.fc(1|2)",
                "ia3": r".*self_attn\.(k_proj|v_proj)|.*\.fc1"}
