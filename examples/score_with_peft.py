"""Score a task's test set with a PEFT export of an mmpt run, using transformers + peft alone.

    python -m mmpt.export RUN_DIR --format peft --out EXPORT_DIR
    python examples/score_with_peft.py EXPORT_DIR --dataset cb --out predictions.jsonl

Writes one {"id", "prediction"} JSON line per test example (test = the task's official validation
set): the predictions of the run's own `predictions/test.jsonl`. mmpt only reads the task's
examples in its text format; the model is loaded and run by transformers and peft.

Rank classification, as mmpt scores (with the default `trainer.rank_length_norm=0`): each answer
choice gets the sum of its tokens' log-probabilities, EOS included, and the highest sum wins.
Token ids on a causal LM (CAUSAL_LM export), each detail of which changes predictions:
- prompt = the tokenizer's leading special tokens only (Llama's BOS; none for GPT-2, Qwen or the
  tiny models' BERT vocabulary, whose [CLS] .. [SEP] a plain `tok(text)` would add), then the
  text without trailing whitespace, truncated to the run's `dataset.max_length` tokens in all,
  and NO EOS: the answer continues the text;
- choice = its tokens as the continuation after a space, then EOS.
On T5 (SEQ_2_SEQ_LM) the source is the text (truncated) + EOS, the target the choice + EOS.
An encoder export is scored with a mean-pool and its head instead (README's snippet).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
import yaml
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from mmpt.data import get_task, resolve_data_dir
from mmpt.errors import MMPTError

DATASET_CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
MODEL_CLASS = {"CAUSAL_LM": AutoModelForCausalLM, "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM}


def load(export_dir: str):
    """(PEFT model in eval mode, tokenizer, task type). A backbone mmpt built in-process (t5_tiny,
    llama_tiny, gpt2_tiny) is saved beside the adapter, and the config names it `base_model`."""
    config = PeftConfig.from_pretrained(export_dir)
    if config.task_type not in MODEL_CLASS or config.peft_type == "POLY":
        raise MMPTError(f"{export_dir}: a {config.task_type} {config.peft_type} adapter; this script scores "
                        f"{sorted(MODEL_CLASS)} adapters without task routing")
    base = config.base_model_name_or_path
    if os.path.isdir(os.path.join(export_dir, base)):
        base = os.path.join(export_dir, base)
    model = PeftModel.from_pretrained(MODEL_CLASS[config.task_type].from_pretrained(base), export_dir).eval()
    return model, AutoTokenizer.from_pretrained(base), config.task_type


def words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def leading_specials(tok) -> list[int]:
    """The special tokens the tokenizer puts before a text, when it puts none after it (Llama's BOS;
    GPT-2 and Qwen have none). The tiny models' BERT vocabulary wraps a text in [CLS] .. [SEP]:
    mmpt uses neither, so never call a plain `tok(text)` here."""
    full, plain = tok("a").input_ids, words(tok, "a")
    n = len(full) - len(plain)
    return full[:n] if full[n:] == plain else []


def causal_prompt(tok, text: str, max_length: int) -> list[int]:
    """The prompt: leading specials, then the text without trailing whitespace, at most
    `max_length` tokens in all, and NO EOS after it: the answer continues the text."""
    lead = leading_specials(tok)
    return lead + tok(text.rstrip(), add_special_tokens=False, truncation=True,
                      max_length=max_length - len(lead)).input_ids


def causal_choice(tok, choice: str, max_target: int, eos: int) -> list[int]:
    """A choice as the prompt's continuation after a space, then EOS: the ids of "a <choice>" past
    those of "a", so BPE scores its ` yes` token and SentencePiece its word-start `▁yes`."""
    return words(tok, "a " + choice.strip())[len(words(tok, "a")):][:max_target - 1] + [eos]


@torch.no_grad()
def causal_score(model, prompt: list[int], choice: list[int]) -> float:
    """Sum over the choice's tokens of log p(token | everything before it), in one forward pass.
    Positions are counted from the end: a prompt-tuning adapter prepends its virtual tokens."""
    logits = model(input_ids=torch.tensor([prompt + choice])).logits[0]
    logp = logits[-len(choice) - 1:-1].float().log_softmax(-1)  # the position before each token predicts it
    return logp.gather(-1, torch.tensor(choice)[:, None]).sum().item()


@torch.no_grad()
def seq2seq_score(model, source: list[int], choice: list[int]) -> float:
    """T5: the source goes to the encoder, the choice is the decoder's target (teacher-forced)."""
    logits = model(input_ids=torch.tensor([source]), labels=torch.tensor([choice])).logits[0]
    return logits.float().log_softmax(-1).gather(-1, torch.tensor(choice)[:, None]).sum().item()


def predict(export_dir: str, dataset: str, max_length: int | None = None) -> list[dict]:
    conf = DATASET_CONF / f"{dataset}.yaml"
    if not conf.is_file():
        raise MMPTError(f"--dataset {dataset}: no {conf}; expected a single task of conf/dataset/")
    if max_length is not None and max_length < 2:
        raise MMPTError(f"--max-length {max_length}: expected an integer >= 2, as dataset.max_length")
    conf = yaml.safe_load(conf.read_text())
    # what the run truncated sources and choices to (the dataset's defaults unless overridden)
    max_length, max_target = max_length or conf["max_length"], conf["max_target_length"]
    task = get_task(dataset)
    examples = task.read("validation", resolve_data_dir(None))  # mmpt's test split
    model, tok, task_type = load(export_dir)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id  # BERT vocabularies: [SEP]
    rows = []
    for ex in examples:
        if task_type == "CAUSAL_LM":
            prompt = causal_prompt(tok, ex.text, max_length)
            scores = [causal_score(model, prompt, causal_choice(tok, c, max_target, eos)) for c in task.verbalizers]
        else:  # T5: source and target are plain texts, each ending in EOS
            source = tok(ex.text, add_special_tokens=False, truncation=True, max_length=max_length - 1).input_ids
            scores = [seq2seq_score(model, source + [eos], words(tok, c)[:max_target - 1] + [eos])
                      for c in task.verbalizers]
        rows.append({"id": ex.id, "prediction": task.verbalizers[scores.index(max(scores))]})  # first best, as argmax
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir", help="a directory written by `python -m mmpt.export RUN_DIR --format peft`")
    p.add_argument("--dataset", required=True, help="the run's task, e.g. cb (conf/dataset/<name>.yaml)")
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    p.add_argument("--max-length", type=int, help="the run's dataset.max_length, if it set one")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.export_dir, "adapter_config.json")):
        print(f"error: {args.export_dir}: no adapter_config.json; expected a PEFT export directory", file=sys.stderr)
        return 2
    try:
        rows = predict(args.export_dir, args.dataset, args.max_length)
    except MMPTError as e:  # unknown task, unreadable data, an adapter this script does not score
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(args.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
