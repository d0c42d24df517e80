"""Runs the docs' offline commands for real, in one process:  python tests/docs_runner.py PLAN OUT

PLAN is a JSON list of pages, each {"page", "commands": [{"where", "script", "argv"}]} (argv as
docs_commands.run_argv makes it). The commands of a page run in order, in-process (as
`python train.py ...` / `python -m mmpt.<tool> ...` would: runpy, sys.argv), in a scratch folder
of the page under OUT, so later commands see what earlier ones wrote. Results go to
OUT/results.json: per command its exit status, seconds and whether its run dirs hold metrics.

One process instead of one per command: a Python start with torch and transformers costs ~8 s.
Only the splits are cut (every split to a few examples, below): the point is that each command
works end to end, not its scores.
"""
import json
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEEP = {"train": 64, "val": 24, "test": 24}


def small_splits():
    """Every task's splits thinned to KEEP examples (evenly spaced, so labels stay mixed), and each
    data file read once for all the commands (the mixtures read SST-2's 67k lines and more)."""
    import functools

    import mmpt.data
    import mmpt.data.mixture
    import mmpt.data.splits
    import mmpt.recipes.common
    from mmpt.data.tasks import TASKS

    for task in TASKS.values():
        read = functools.lru_cache(maxsize=None)(task.read)
        task.read = lambda split, data_dir, read=read: list(read(split, str(data_dir) if data_dir else None))

    original = mmpt.data.splits.load_splits

    def load_splits(*args, **kwargs):
        out = original(*args, **kwargs)
        for name, examples in out.items():
            step = max(1, len(examples) // KEEP.get(name, len(examples)))
            out[name] = examples[::step][:KEEP.get(name)]
        return out

    for module in (mmpt.data, mmpt.data.splits, mmpt.data.mixture, mmpt.recipes.common):
        module.load_splits = load_splits


def tiny_bert(where: Path) -> str:
    """A small random BERT with MiniLM's vocabulary, standing in for `model=minilm`."""
    import torch
    from transformers import BertConfig, BertModel

    from mmpt.models.backbone import load_tokenizer, minilm_dir

    if not (where / "config.json").exists():
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64), add_pooling_layer=False).save_pretrained(where)
        load_tokenizer(minilm_dir()).save_pretrained(where)
    return str(where)


def run(script: str, argv: list[str]) -> int:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    path = str(ROOT / f"{script}.py") if script in ("train", "finetune") else script
    sys.argv = [path, *argv]
    try:
        if script in ("train", "finetune"):
            runpy.run_path(path, run_name="__main__")
        else:
            runpy.run_module(script, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - recorded as the command's failure
        print(f"{type(e).__name__}: {e}", flush=True)
        return 1
    return 0


def finished(out_dir: Path | None, multirun: bool) -> str | None:
    """What is missing from a finished run (or sweep) dir: None when every run wrote metrics.json."""
    if out_dir is None:
        return None
    if not multirun:
        return None if (out_dir / "metrics.json").exists() else f"no metrics.json in {out_dir}"
    jobs = [d for d in out_dir.iterdir() if d.is_dir() and d.name.isdigit()] if out_dir.is_dir() else []
    bad = [d.name for d in jobs if not (d / "metrics.json").exists()]
    if not jobs or bad:
        return f"sweep {out_dir}: {len(jobs)} jobs, without metrics.json: {bad}"
    return None


def main(plan_file: str, out: str) -> None:
    out = Path(out).resolve()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    os.environ.setdefault("MMPT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    small_splits()
    bert = tiny_bert(out / "tiny_bert")
    results = {}
    for page in json.loads(Path(plan_file).read_text()):
        scratch = out / page["page"].replace("/", "_")
        scratch.mkdir(parents=True, exist_ok=True)
        if not (scratch / "results").exists():
            (scratch / "results").symlink_to(ROOT / "results")  # the runs kept as data
        os.chdir(scratch)
        for cmd in page["commands"]:
            argv = [a.replace("TINY_BERT", bert) for a in cmd["argv"]]
            print(f"\n### {cmd['where']}: {' '.join(argv)}", flush=True)
            start = time.time()
            code = run(cmd["script"], argv)
            multirun = "-m" in argv
            key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
            dirs = [a.split("=", 1)[1] for a in argv if a.startswith(key)]
            missing = finished(scratch / dirs[-1], multirun) if dirs and code == 0 else None
            results[cmd["where"]] = {"code": code, "seconds": round(time.time() - start, 1), "missing": missing}
            print(f"### {cmd['where']}: exit {code} in {results[cmd['where']]['seconds']} s {missing or ''}",
                  flush=True)
        os.chdir(out)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
