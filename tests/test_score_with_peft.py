"""examples/score_with_peft.py, README's recipe for scoring an export with transformers + peft alone:
it gives the run's own test predictions, and it formats prompts and choices as mmpt does."""
import importlib.util
import json

import pytest
from transformers import AutoTokenizer

from conftest import ROOT
from mmpt.data import EncodedSplit
from mmpt.data.base import Example
from mmpt.export.__main__ import export
from mmpt.models.backbone import load_tokenizer, minilm_dir
from test_causal_prompts import byte_bpe, word_marks
from test_export import run

spec = importlib.util.spec_from_file_location("score_with_peft", ROOT / "examples" / "score_with_peft.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

# Runs whose test predictions differ from example to example (a run that predicts one label for all
# would agree with a wrong recipe too): causal LMs with init_std 0.2 (at 0.02 a few LoRA steps
# predict the majority label), t5_tiny after few steps.
# gpt2 runs truncate at 64 tokens (the script is told so), llama and T5 at cb.yaml's 256.
INIT = ["model.init_std=0.2", "trainer.max_steps=20"]
GPT2_64 = ["dataset.max_length=64"], ["--max-length", "64"]  # (run overrides, the script's arguments)
RUNS = {
    ("llama_tiny", "lora"): ([*INIT, "optimizer.groups.adapters.lr=3e-3"], []),
    ("llama_tiny", "ia3"): ([*INIT, "optimizer.groups.adapters.lr=1e-2"], []),
    ("gpt2_tiny", "lora"): ([*INIT, "optimizer.groups.adapters.lr=3e-3", *GPT2_64[0]], GPT2_64[1]),
    ("gpt2_tiny", "ia3"): ([*INIT, "optimizer.groups.adapters.lr=1e-2", *GPT2_64[0]], GPT2_64[1]),
    ("t5_tiny", "lora"): (["trainer.max_steps=5"], []),  # t5_tiny predicts one label for all after 10 steps
}


def read(path) -> dict:
    return {r["id"]: r["prediction"] for r in map(json.loads, open(path))}


@pytest.mark.parametrize("model, method", list(RUNS))
def test_the_example_gives_the_runs_test_predictions(tmp_path, model, method):
    over, args = RUNS[model, method]
    run(tmp_path / "run", [f"model={model}", f"method={method}", "dataset=cb", *over])
    export(tmp_path / "run", "peft", tmp_path / "peft")
    assert example.main([str(tmp_path / "peft"), "--dataset", "cb", "--out", str(tmp_path / "p.jsonl"), *args]) == 0
    ours, theirs = read(tmp_path / "run" / "predictions" / "test.jsonl"), read(tmp_path / "p.jsonl")
    assert len(ours) == 56 and theirs == ours
    assert len(set(ours.values())) >= 2, ours  # the run tells examples apart, so agreement is not a constant


VOCABS = {"bert": minilm_dir, "bpe": byte_bpe, "marks": word_marks}  # [CLS]..[SEP]; none; a BOS


@pytest.mark.parametrize("vocab", list(VOCABS))
def test_prompts_and_choices_are_mmpts_token_ids(tmp_path, vocab):
    """On the tiny models' BERT vocabulary, byte-level BPE (GPT-2, Qwen) and SentencePiece-style
    marks with a BOS (Llama 2, Mistral); long texts truncated at max_length, trailing space dropped."""
    source = VOCABS[vocab]()
    if not isinstance(source, str):
        source.save_pretrained(tmp_path)
        source = str(tmp_path)
    mmpt_tok = load_tokenizer(source)
    mmpt_tok.mmpt_prompts = True  # what models/causal.py sets: sources are prompts, choices continuations
    texts = ["is the sky blue? ", "the cat sat on the mat. the cat sat on the mat. birds fly south\n", "maybe so"]
    choices = ["yes", "no", "maybe so"]
    split = EncodedSplit([Example(str(i), t, 0) for i, t in enumerate(texts)], mmpt_tok, 8, choices)
    tok = AutoTokenizer.from_pretrained(source)  # as a user loads it
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    assert [example.causal_prompt(tok, t, 8) for t in texts] == split.input_ids
    assert [example.causal_choice(tok, c, 16, eos) for c in choices] == split.choices
    assert max(map(len, split.input_ids)) == 8  # the long text was truncated


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    (tmp_path / "peft").mkdir()
    assert example.main([str(tmp_path / "peft"), "--dataset", "cb", "--out", str(out)]) == 2
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert example.main([str(tmp_path / "peft"), "--dataset", "nope", "--out", str(out)]) == 2
    assert example.main([str(tmp_path / "peft"), "--dataset", "cb", "--max-length", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "adapter_config.json" in err[0] and "--dataset nope" in err[1] and "--max-length 1" in err[2]
    assert not out.exists()
