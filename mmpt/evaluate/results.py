"""RUN_DIR/eval/: lm-eval's results object (results.json; base_results.json for --base), one entry
per task, a later evaluation of a task replacing its entry; lm-eval's samples files (--log-samples)."""
import json
import os
import time
from pathlib import Path

from mmpt.errors import MMPTError

EVAL_DIR = "eval"
RESULTS, BASE_RESULTS = "results.json", "base_results.json"
# lm-eval's top-level entries keyed by task name: merged task by task; the rest is the last run's
PER_TASK = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
            "n-samples")


def path_of(run_dir, base: bool = False) -> Path:
    return Path(run_dir) / EVAL_DIR / (BASE_RESULTS if base else RESULTS)


def read(path: Path) -> dict:
    """The results object at path ({} if there is none); an unreadable one is a one-line error."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MMPTError(f"{path}: unreadable results file ({e}); move it away or fix it") from None
    if not isinstance(data, dict) or not isinstance(data.get("results", {}), dict):
        raise MMPTError(f"{path}: not an lm-eval results object (no `results` mapping); move it away or fix it")
    return data


def evaluated(path: Path) -> set[str]:
    return set(read(path).get("results", {}))


def merge(old: dict, new: dict) -> dict:
    """old with new's tasks replacing theirs; run-level entries (date, config) from new."""
    out = {**old, **{k: v for k, v in new.items() if k not in PER_TASK and k != "samples"}}
    for key in PER_TASK:
        if key in new or key in old:
            out[key] = {**(old.get(key) or {}), **(new.get(key) or {})}
    return out


def _serializable():
    """lm-eval's own fallback for what json cannot write (numpy numbers, functions in configs)."""
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=_serializable(), ensure_ascii=False)


def write_atomic(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(run_dir, new: dict, base: bool = False) -> Path:
    """Merge lm-eval's results object into the run's file (re-read now: the latest wins)."""
    path = path_of(run_dir, base)
    write_atomic(path, _json(merge(read(path), new)) + "\n")
    if new.get("samples"):
        save_samples(run_dir, new["samples"], base)
    return path


def save_samples(run_dir, samples: dict, base: bool = False) -> None:
    """lm-eval's samples files, one JSON line per document: eval/samples_<task>_<time>.jsonl
    (eval/base/ for --base)."""
    folder = Path(run_dir) / EVAL_DIR / ("base" if base else "")
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    for task, rows in samples.items():
        lines = [json.dumps(row, default=_serializable(), ensure_ascii=False) for row in rows]
        write_atomic(folder / f"samples_{task}_{stamp}.jsonl", "\n".join(lines) + "\n")

