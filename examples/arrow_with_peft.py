"""Route an mmpt expert library with PEFT's Arrow (create_arrow_model), using transformers + peft alone.

    python -m mmpt.library export LIB --to peft --out DIR [--general sst2 mrpc]
    python examples/arrow_with_peft.py DIR --top-k 2 --temperature 1.0 --text "premise: ... question: ..."

Loads every DIR/task_<name>/ folder as a task expert (and DIR/general_<name>/ as GenKnowSub's
general experts, with use_gks), on the base model their adapter_config.json names, and prints the
most likely next tokens of the text. With the same top_k and temperature it computes what
`finetune.py library=LIB finetune_type=arrow` does (tests/test_library_peft.py checks the logits).
"""
import argparse
import glob
import json
import os
import sys

import torch
from peft import ArrowConfig, create_arrow_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def folders(export_dir: str, kind: str) -> list:
    return sorted(p for p in glob.glob(os.path.join(export_dir, f"{kind}_*"))
                  if os.path.isfile(os.path.join(p, "adapter_config.json")))


def load(export_dir: str, top_k: int = 3, temperature: float = 1.0):
    """(PEFT Arrow model over the export's experts, tokenizer)."""
    tasks, general = folders(export_dir, "task"), folders(export_dir, "general")
    with open(os.path.join(tasks[0], "adapter_config.json")) as f:
        base_dir = json.load(f)["base_model_name_or_path"]  # absolute: loads from anywhere
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = ArrowConfig(top_k=top_k, router_temperature=temperature, use_gks=bool(general))
    model = create_arrow_model(base_model=base, task_specific_adapter_paths=tasks,
                               general_adapter_paths=general or None, arrow_config=config)
    return model.eval(), AutoTokenizer.from_pretrained(base_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir")
    p.add_argument("--top-k", type=int, default=3, help="PEFT's default 3; mmpt's arrow default 4")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--text", default="the cat sat on the mat")
    args = p.parse_args(argv)
    model, tok = load(args.export_dir, args.top_k, args.temperature)
    with torch.no_grad():
        logits = model(**tok(args.text, return_tensors="pt")).logits[0, -1]
    top = logits.softmax(-1).topk(5)
    for prob, idx in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{tok.decode([idx])!r:>16}  {prob:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
