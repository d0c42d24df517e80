"""python -m mmpt.export RUN_DIR --format peft|merged --out DIR [--task-id N] [--push-to-hub REPO]

peft: a PEFT adapter directory (`PeftModel.from_pretrained(base, DIR)`), with `base_model/` beside
it when the backbone was built in-process. merged: the backbone with the adapters folded in,
saved with save_pretrained plus its tokenizer (loads with AutoModel*, no mmpt, no peft). Encoder
runs also get their task heads (head.safetensors + head.json). Anything that cannot be exported
fails with one line before anything is written.
"""
import argparse
import logging
import shutil
import sys
from pathlib import Path

from mmpt.errors import MMPTError
from mmpt.export import head, merged, peft_format
from mmpt.export.mapping import ExportError
from mmpt.export.mappings import peft_mapping
from mmpt.export.base_model import base_name, base_reference, save_base
from mmpt.data.mixture import tasks_of
from mmpt.runs import load_model, open_run

log = logging.getLogger("mmpt.export")


def export(run_dir, fmt: str, out, task_id: int = 0) -> Path:
    """Write the run in format `fmt` to `out` (which must not hold anything yet); return `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} already exists and is not empty; choose a new directory")
    run = open_run(run_dir, "export")
    cfg, model = run.cfg, load_model(run)
    # Everything that can refuse runs before the first file is written.
    if fmt == "peft":
        mapping = peft_mapping(model.method)
        weights = peft_format.tensors(mapping, model)
    else:
        backbone = merged.merge(model, task_id)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if fmt == "peft":
        base = base_name(cfg.model)
        if base is None:  # built in-process: a copy beside the adapter, named by its final absolute path
            save_base(cfg.model, tmp)
            base = base_reference(out)
        peft_format.write(tmp, mapping, weights, model, base)
    else:
        backbone.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
    if model.family.has_heads:
        head.write(model, tasks_of(cfg.dataset), tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def push(out: Path, repo: str) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo)
    except Exception as e:  # offline, no token, no permission: all the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MMPTError(f"--push-to-hub {repo}: upload failed ({first}); the export is in {out}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmpt.export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the directory of a finished train.py run")
    p.add_argument("--format", choices=("peft", "merged"), required=True)
    p.add_argument("--out", required=True, help="a new directory")
    p.add_argument("--task-id", type=int, default=0, help="merged poly runs: the task whose skill mix to fold")
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload the export to this hub repository")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    try:
        out = export(args.run_dir, args.format, args.out, args.task_id)
        print(f"wrote {args.format} export of {args.run_dir} to {out}")
        if args.push_to_hub:
            push(out, args.push_to_hub)
            print(f"uploaded to {args.push_to_hub}")
    except MMPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
