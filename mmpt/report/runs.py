"""Read finished runs (metrics.json + the Hydra config beside them) into one row per run.

A run is a folder with metrics.json. Its config is the nearest `.hydra/config.yaml` at or above
it, so the per-seed folders of `mean_over_seeds` runs (seed_<s>/) count as separate seeds and
their averaged parent is not counted twice. A folder with a config but no metrics.json is an
incomplete run (killed, failed or still running): it is skipped and counted.

Each run gets an *identity*: its whole config, flattened to dotted keys, minus the seed and the
run-control keys below, which cannot change a run's numbers. Runs are averaged only when their
identities are equal (mmpt/report/stats.py), i.e. when they differ in nothing but the seed.
"""
import json
import re
from pathlib import Path

import pandas as pd
import yaml

from mmpt.config_keys import drop_defaults

# Keys (and key prefixes) that cannot change what a run computes. Everything else - including
# eval cadence (it decides which checkpoint is "best"), eval batch size and precision - is part of
# the identity. `mean_over_seeds` only says which seeds ran; each seed_<s>/ run is one seed.
RUN_CONTROL = ("seed", "mean_over_seeds", "resume", "task_name", "optimized_metric", "paths", "logger",
               "hydra", "trainer.log_every", "trainer.save_predictions", "trainer.threads")
# What a run cost (metrics.json; the keys of mmpt/engine/cost.py, which imports torch: the report does not)
COST = ("peak_mem_mb", "train_tokens_per_s", "adapter_mb", "backbone_mb")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_run_control(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_CONTROL)


def identity(cfg: dict, cwd=".") -> dict:
    """The config keys that can change results. A finetune.py run's `pretrained` path is replaced
    by the pretrained run's own identity (as `pretrained.<key>`), so re-running the pre-training in
    another folder does not split a group, while a different pre-training does. `cwd`: where
    finetune.py ran (a relative `pretrained` is relative to it); an unreadable path stays as is."""
    ident = {k: v for k, v in drop_defaults(flatten(cfg)).items() if not is_run_control(k)}
    if cfg.get("pretrained"):
        pre = _pretrained_config(cfg["pretrained"], cwd)
        if pre is not None:
            del ident["pretrained"]
            ident.update({f"pretrained.{k}": v for k, v in identity(pre).items()})
    return ident


def _pretrained_config(path, cwd=".") -> dict | None:
    """A pretrained run's config; its path is as given to finetune.py (relative: to its cwd, or
    to ours when the runs were copied from elsewhere)."""
    for d in (Path(cwd), Path(".")):
        f = d / path / ".hydra" / "config.yaml"
        if f.exists():
            return yaml.safe_load(f.read_text())
    return None


def _hydra_files(run: Path, root: Path) -> tuple[dict | None, dict]:
    """(config.yaml, hydra.yaml) of the nearest .hydra/ at or above `run` (not above root)."""
    for d in (run, *run.parents):
        f = d / ".hydra" / "config.yaml"
        if f.exists():
            h = d / ".hydra" / "hydra.yaml"
            return yaml.safe_load(f.read_text()), yaml.safe_load(h.read_text()) if h.exists() else {}
        if d == root:
            break
    return None, {}


def method_name(cfg: dict, cwd=".") -> str:
    """The method's name; finetune.py runs have none of their own: their pre-trained run's (or
    `library`), and the fine-tuning type (e.g. poly_lora/Z, library/arrow)."""
    name = (cfg.get("method") or {}).get("name")
    if name is None and cfg.get("library"):  # finetune.py library=DIR: e.g. library/arrow
        name = "library"
    if name is None and cfg.get("pretrained"):
        pre = _pretrained_config(cfg["pretrained"], cwd) or {}
        name = (pre.get("method") or {}).get("name")
    name = name or "?"
    return f"{name}/{cfg['finetune_type']}" if cfg.get("finetune_type") else name


def _study(hydra: dict, run: Path, root: Path) -> str:
    """The study a hyperparameter-search trial belongs to ("" for plain runs and grids): Optuna
    trials differ by design, so the report lists them in their own table. Named by the study and,
    when the sweep lies below the report's folder, the sweep's folder."""
    h = hydra.get("hydra") or {}
    sweeper = (h.get("sweeper") or {}).get("_target_", "")
    if h.get("mode") != "MULTIRUN" or not sweeper or sweeper.endswith("BasicSweeper"):
        return ""
    name = h["sweeper"].get("study_name") or sweeper.rsplit(".", 1)[-1]
    trial = run if not re.fullmatch(r"seed_\d+", run.name) else run.parent
    where = trial.parent.relative_to(root).as_posix()
    return f"{name} ({where})" if where not in ("", ".") else name


def _trial_number(hydra: dict):
    """A search trial's number (mmpt's sweeper sets hydra.sweeper.trial), else the job's; None outside sweeps."""
    h = hydra.get("hydra") or {}
    if h.get("mode") != "MULTIRUN":
        return None
    number = (h.get("sweeper") or {}).get("trial")
    return number if number is not None else (h.get("job") or {}).get("num")


def overrides(hydra: dict) -> dict:
    """What the user chose on the command line (hydra.overrides.task, e.g. `model=t5_tiny`,
    `method.rank=4`), as {key: value}, run-control keys aside: what row labels name."""
    out = {}
    for item in ((hydra.get("hydra") or {}).get("overrides") or {}).get("task") or []:
        key, eq, value = str(item).partition("=")
        key = key.lstrip("+~")
        if eq and not is_run_control(key):
            out[key] = value
    return out


def test_key(metrics: dict) -> str:
    """The test counterpart of what the run selected its checkpoint on (the task's main metric)."""
    key = metrics.get("optimized_metric_key") or "val/acc"
    return "test/" + key.split("/", 1)[1]


def collect(root) -> tuple[pd.DataFrame, int]:
    """(one row per finished run, number of incomplete runs) under `root`."""
    root = Path(root)
    rows, incomplete = [], 0
    for cfg_file in sorted(root.rglob(".hydra/config.yaml")):
        run = cfg_file.parent.parent
        if not (run / "metrics.json").exists() and not list(run.glob("seed_*/metrics.json")):
            incomplete += 1
    for mfile in sorted(root.rglob("metrics.json")):
        run = mfile.parent
        if list(run.glob("seed_*/metrics.json")):
            continue  # the mean of seed sub-runs, which are counted one by one
        cfg, hydra = _hydra_files(run, root)
        if cfg is None:
            continue
        metrics = json.loads(mfile.read_text())
        seed = re.fullmatch(r"seed_(\d+)", run.name)
        # a pruned trial (its own metrics.json, or a mean_over_seeds trial's: the seeds it finished)
        trial_metrics = json.loads((run.parent / "metrics.json").read_text()) if seed and (
            run.parent / "metrics.json").exists() else metrics
        key = test_key(metrics)
        runtime = (hydra.get("hydra") or {}).get("runtime") or {}
        cwd = runtime.get("cwd") or "."
        ident = identity(cfg, cwd)
        choices = runtime.get("choices") or {}
        rows.append({
            "run": run.relative_to(root).as_posix() or ".", "method": method_name(cfg, cwd),
            "task": (cfg.get("dataset") or {}).get("name", "?"), "metric": key.split("/", 1)[1],
            "seed": int(seed.group(1)) if seed else cfg.get("seed"),
            "score": metrics.get(key), "val": metrics.get(metrics.get("optimized_metric_key", "")),
            "trainable_params": metrics.get("trainable_params"),
            **{k: metrics.get(k) for k in COST},  # engine/cost.py (runs before it have none)
            "identity": json.dumps(ident, sort_keys=True, default=str), "settings": ident,
            "choices": {k: v for k, v in choices.items() if "/" not in k}, "overrides": overrides(hydra),
            "trial_number": _trial_number(hydra),
            "study": _study(hydra, run, root), "curve": str(run / "metrics.jsonl"),
            "val_key": metrics.get("optimized_metric_key"),
            "pruned": trial_metrics.get("pruned") is True, "pruned_step": trial_metrics.get("pruned_step"),
            "trial": (run.parent if seed else run).relative_to(root).as_posix() or ".",
        })
    return pd.DataFrame(rows), incomplete


def sweep_best(root) -> list[tuple[str, dict]]:
    """(sweep dir, optimization_results.yaml) of every Optuna sweep under root."""
    root = Path(root)
    return [(f.parent.relative_to(root).as_posix() or ".", yaml.safe_load(f.read_text()))
            for f in sorted(root.rglob("optimization_results.yaml"))]
