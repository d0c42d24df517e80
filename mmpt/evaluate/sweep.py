"""Which runs a folder holds: itself (a finished run) or the finished runs under it (a sweep)."""
import json
from pathlib import Path

from mmpt.errors import MMPTError
from mmpt.evaluate.load import read_config
from mmpt.recipes.rebuild import is_finetune_run
from mmpt.runs import CONFIG, open_run


def _metrics(run: Path) -> dict | None:
    try:
        return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def finished_runs(folder: Path) -> tuple[list[Path], list[str], bool]:
    """(runs to score, a line for each run skipped, whether `folder` is a sweep). A single run
    must be finished (open_run's one-line errors); in a sweep, pruned, failed and unfinished runs
    are skipped and said so, and a sweep with no finished run at all is an error. A finetune.py
    run is checked as it is rebuilt (a library type that trains nothing has no checkpoints/best);
    a run refused then is skipped by the sweep's loop (__main__.run)."""
    if (folder / CONFIG).is_file():
        if not is_finetune_run(read_config(folder)):
            open_run(folder, "mmpt.evaluate")
        return [folder], [], False
    runs, skipped = [], []
    for cfg in sorted(folder.rglob(CONFIG.as_posix())):
        run = cfg.parent.parent
        metrics = _metrics(run)
        if metrics is None:
            skipped.append(f"{run}: skipped (no metrics.json: failed, killed or still running)")
        elif metrics.get("pruned") is True:
            skipped.append(f"{run}: skipped (pruned by the sweep)")
        elif not (run / "checkpoints" / "best").is_dir() and "finetune_type" not in _config_keys(cfg):
            skipped.append(f"{run}: skipped (no checkpoints/best)")
        else:
            runs.append(run)
    if not runs:
        raise MMPTError(f"{folder}: no finished train.py or finetune.py run in it or under it "
                        f"({len(skipped)} skipped); "
                        "expected a run folder (.hydra/config.yaml, checkpoints/best, metrics.json)")
    return runs, skipped, True


def _config_keys(cfg: Path) -> set:
    import yaml

    try:
        return set(yaml.safe_load(cfg.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return set()
