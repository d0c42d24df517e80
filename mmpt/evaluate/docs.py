"""The documents of mmpt's lm-eval tasks (`mmpt_<dataset>`, the YAMLs in tasks/): mmpt's own test
split (the official validation set) read from the local data with mmpt's templates, in
predictions/test.jsonl's order.

Three details make lm-eval's choice equal a run's prediction on every example (measured on tiny
llama/gpt2 exports; docs/evaluation.md):
- the context is the template's text truncated as mmpt truncates it (`max_length` source tokens
  of the model's tokenizer, cut where that token ends), without trailing whitespace;
- every choice ends with the tokenizer's EOS text, which mmpt appends after each verbalizer;
- no special tokens before the context (plain lm_eval: `add_bos_token=False`).
The tokenizer comes from lm-eval's metadata: `mmpt_run` (python -m mmpt.evaluate passes the run's
folder) or `tokenizer` / `pretrained` (plain lm_eval's --model_args). Without one the documents
are the untruncated texts and plain verbalizers.
"""
from pathlib import Path

import datasets
from omegaconf import OmegaConf

from mmpt.data.collate import leading_specials
from mmpt.data.splits import resolve_data_dir
from mmpt.data.tasks import get_task

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
DEFAULT_MAX_LENGTH = 128  # conf/dataset/*.yaml's value where a dataset sets none


def max_length_of(dataset: str, run_cfg=None) -> int:
    """The run's dataset.max_length for its own dataset (or one of its mixture's), else the
    dataset's default config."""
    if run_cfg is not None and dataset in [run_cfg.dataset.get("name"), *(run_cfg.dataset.get("tasks") or [])]:
        return int(run_cfg.dataset.max_length)
    conf = CONF / f"{dataset}.yaml"
    return int(OmegaConf.load(conf).get("max_length", DEFAULT_MAX_LENGTH)) if conf.is_file() else DEFAULT_MAX_LENGTH


def _run_tokenizer(run_dir):
    """(tokenizer, causal?, run config) of a run folder, without building its model."""
    from mmpt.models.backbone import load_tokenizer, minilm_dir, _tokenizer
    from mmpt.models.family import family_of_build
    from mmpt.recipes.rebuild import backbone_config
    from mmpt.runs import CONFIG

    cfg = OmegaConf.load(Path(run_dir) / CONFIG)
    model = backbone_config(cfg)  # a finetune.py run's: its pretrained run's or library's
    family = family_of_build(model.get("build"))
    if family is not None:
        tok = load_tokenizer(model.get("tokenizer") or minilm_dir())
        return tok, family.name == "causal", cfg
    name = model.get("name_or_path") or minilm_dir()
    return _tokenizer(model.get("tokenizer") or name), _is_causal(name), cfg


def _is_causal(name) -> bool:
    from transformers import AutoConfig

    return not AutoConfig.from_pretrained(name).is_encoder_decoder


def tokenizer_from(meta: dict):
    """(tokenizer or None, causal?, run config or None) from lm-eval's task metadata."""
    if meta.get("mmpt_run"):
        return _run_tokenizer(meta["mmpt_run"])
    name = meta.get("tokenizer") or meta.get("pretrained")
    if not isinstance(name, str):
        return None, True, None
    from mmpt.models.backbone import load_tokenizer

    return load_tokenizer(name), _is_causal(meta.get("pretrained") or name), None


def truncate(text: str, tokenizer, max_length: int, causal: bool) -> str:
    """The text as mmpt encodes it: a causal prompt keeps max_length minus its leading special
    tokens, a T5 source max_length - 1 tokens (then EOS); cut after the last kept token."""
    text = text.rstrip()
    if tokenizer is None:
        return text
    budget = max_length - (len(leading_specials(tokenizer)) if causal else 1)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= budget:
        return text
    return text[:enc["offset_mapping"][budget - 1][1]]


def load(dataset: str, **meta) -> datasets.DatasetDict:
    """custom_dataset of an mmpt task YAML: {"test": id, text, label, choices} in file order."""
    tokenizer, causal, run_cfg = tokenizer_from(meta)
    task = get_task(dataset)
    data_dir = meta.get("data_dir") or (run_cfg.paths.get("data_dir") if run_cfg is not None else None)
    examples = task.read("validation", resolve_data_dir(data_dir))
    # plain lm_eval on a run with another dataset.max_length: --metadata '{"mmpt_max_length": N}'
    length = int(meta.get("mmpt_max_length") or max_length_of(dataset, run_cfg))
    eos = tokenizer.eos_token if tokenizer is not None else ""
    choices = [v.strip() + eos for v in task.verbalizers]
    rows = [{"id": ex.id, "text": truncate(ex.text, tokenizer, length, causal), "label": ex.label,
             "choices": choices} for ex in examples]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
