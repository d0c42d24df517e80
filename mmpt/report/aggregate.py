"""Read runs (metrics.json + the Hydra config beside them) into a table: method x task.

A run is a folder with metrics.json. Its config is the nearest `.hydra/config.yaml` at or above
it, so the per-seed folders of `mean_over_seeds` runs (seed_<s>/) count as separate seeds and
their averaged parent is not counted twice. A folder with a config but no metrics.json is an
incomplete run (killed, failed or still running): it is skipped and counted.
"""
import json
import re
from pathlib import Path

import pandas as pd
import yaml


def _config(run: Path, root: Path) -> dict | None:
    for d in (run, *run.parents):
        f = d / ".hydra" / "config.yaml"
        if f.exists():
            return yaml.safe_load(f.read_text())
        if d == root:
            return None
    return None


def _method(cfg: dict) -> str:
    """The method's name; finetune.py runs have none of their own: their pre-trained run's."""
    name = (cfg.get("method") or {}).get("name")
    if name is None and cfg.get("pretrained"):  # a path as given to finetune.py (relative: to the cwd)
        pre = Path(cfg["pretrained"]) / ".hydra" / "config.yaml"
        if pre.exists():
            name = (yaml.safe_load(pre.read_text()).get("method") or {}).get("name")
    return name or "?"


def _main_metric(task: str, metrics: dict) -> str:
    key = metrics.get("optimized_metric_key") or ""
    if key.startswith("val/"):
        return "test/" + key[4:]
    try:
        from mmpt.data import get_task
        return "test/" + get_task(task).main_metric
    except Exception:  # an unknown task name (e.g. a mixture): fall back to accuracy
        return "test/acc"


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
        cfg = _config(run, root)
        if cfg is None:
            continue
        metrics = json.loads(mfile.read_text())
        task = cfg.get("dataset", {}).get("name", "?")
        method = _method(cfg)
        if cfg.get("finetune_type"):
            method = f"{method}/{cfg['finetune_type']}"
        seed = re.fullmatch(r"seed_(\d+)", run.name)
        key = _main_metric(task, metrics)
        rows.append({"run": str(run.relative_to(root)) or ".", "method": method, "task": task,
                     "seed": int(seed.group(1)) if seed else cfg.get("seed"), "metric": key,
                     "score": metrics.get(key), "val": metrics.get(metrics.get("optimized_metric_key", "")),
                     "trainable_params": metrics.get("trainable_params")})
    return pd.DataFrame(rows), incomplete


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """method x task "mean ± std (n)" in percent, an average column and trainable parameters."""
    g = runs.groupby(["method", "task"])["score"]
    stats = pd.DataFrame({"mean": g.mean() * 100, "std": g.std(ddof=0) * 100, "n": g.count()})
    cell = stats.apply(lambda r: f"{r['mean']:.1f} ± {r['std']:.1f} ({int(r['n'])})", axis=1)
    out = cell.unstack("task")
    out["average"] = stats["mean"].unstack("task").mean(axis=1).map("{:.1f}".format)
    out["trainable params"] = runs.groupby("method")["trainable_params"].max().map("{:,.0f}".format)
    return out.fillna("-")


def sweep_summary(root) -> tuple[dict, pd.DataFrame] | None:
    """For a Hydra/Optuna sweep dir: (optimization_results.yaml, tried values and scores)."""
    root = Path(root)
    res = root / "optimization_results.yaml"
    if not res.exists():
        return None
    best = yaml.safe_load(res.read_text())
    tried = []
    for ov in sorted(root.glob("*/.hydra/overrides.yaml"), key=lambda p: int(p.parent.parent.name)
                     if p.parent.parent.name.isdigit() else 0):
        run = ov.parent.parent
        params = {k: v for k, v in (o.split("=", 1) for o in yaml.safe_load(ov.read_text()))
                  if k in best.get("best_params", {})}
        m = run / "metrics.json"
        metrics = json.loads(m.read_text()) if m.exists() else {}
        value = metrics.get(metrics.get("optimized_metric_key", ""), None)
        tried.append({"trial": run.name, **params, "value": value if m.exists() else "failed/incomplete"})
    return best, pd.DataFrame(tried)
