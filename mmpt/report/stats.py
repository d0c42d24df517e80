"""Group runs that differ only in the seed; 95% confidence intervals; paired tests vs a baseline.

Scores are the runs' test metric x 100 (accuracy and F1 in %, correlations x 100).
"""
import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from mmpt.errors import ConfigError
from mmpt.report.runs import COST


def ci95(values) -> tuple[float, float]:
    """Two-sided 95% interval of the mean: t-distribution with n-1 dof over the sample std
    (ddof=1). No interval (NaN) for one value; a point for n equal values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    sem = x.std(ddof=1) / math.sqrt(len(x))
    if sem == 0:
        return float(x.mean()), float(x.mean())
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem)
    return float(low), float(high)


def paired(scores: dict, base: dict) -> dict:
    """Paired comparison over the seeds both ran (same seed = same data order and k-shot sample):
    delta = mean(score - baseline) and the two-sided p-value of scipy's paired t-test. Fewer
    than 2 shared seeds: no test (p NaN). Identical pairs: p = 1."""
    seeds = sorted(set(scores) & set(base))
    a, b = np.array([scores[s] for s in seeds]), np.array([base[s] for s in seeds])
    delta = float((a - b).mean()) if seeds else math.nan
    if len(seeds) < 2:
        p = math.nan
    elif np.all(a - b == 0):
        p = 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"n_paired": len(seeds), "delta": delta, "p_value": p}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _named(same: pd.DataFrame, shown_groups: set, varying: set) -> pd.Series:
    keys = sorted(k for k in varying if k.split(".", 1)[0] not in shown_groups)
    names = {}
    for i, row in same.iterrows():
        parts = [f"{g}={row['choices'][g]}" for g in sorted(shown_groups)]
        parts += [f"{k}={_fmt(row['settings'].get(k, '-'))}" for k in keys]
        names[i] = f"{row['method']} ({', '.join(parts)})"
    return pd.Series(names)


def labels(groups: pd.DataFrame) -> pd.Series:
    """Row labels: the method name plus the settings in which groups of that method differ within
    a task (e.g. `lora (method.rank=4)`). A config group whose choice differs is shown by its
    choice (`model=t5_tiny`), not by every key it changes."""
    out = pd.Series(groups["method"].values, index=groups.index)
    for _, same in groups.groupby("method"):
        varying = set()
        for _, cell in same.groupby("task"):
            keys = set().union(*(s.keys() for s in cell["settings"]))
            varying |= {k for k in keys if len({json.dumps(s.get(k), default=str) for s in cell["settings"]}) > 1}
        if not varying:
            continue
        shown_groups = set()
        for g in {k.split(".", 1)[0] for k in varying if "." in k}:
            picked = {c.get(g) for c in same["choices"]}
            if None not in picked and len(picked) > 1:
                shown_groups.add(g)
        named = _named(same, shown_groups, varying)
        if pd.DataFrame({"task": same["task"], "label": named}).duplicated().any():
            named = _named(same, set(), varying)  # a choice that does not tell its rows apart: every key
        out[named.index] = named
    return out


def group(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (identity, task): n, seeds, mean, std (ddof=1), ci95_low/high, val_mean,
    trainable_params, the per-seed scores (`by_seed`, for paired tests) and a row label."""
    rows = []
    for (ident, study), g in runs.groupby(["identity", "study"], sort=False):
        scores = g["score"].astype(float).to_numpy() * 100
        low, high = ci95(scores)
        params = g["trainable_params"].dropna()
        by_seed = g.assign(s=scores).groupby("seed")["s"].mean().to_dict()  # repeated seeds: averaged
        rows.append({
            "identity": ident, "study": study, "task": g["task"].iloc[0], "metric": g["metric"].iloc[0],
            "method": g["method"].iloc[0], "n": len(g), "seeds": " ".join(str(s) for s in sorted(g["seed"])),
            "mean": scores.mean(), "std": scores.std(ddof=1) if len(g) > 1 else math.nan,
            "ci95_low": low, "ci95_high": high, "val_mean": g["val"].astype(float).mean() * 100,
            "trainable_params": int(params.iloc[0]) if len(params) else pd.NA,
            **{k: pd.to_numeric(g[k], errors="coerce").mean() if k in g else math.nan for k in COST},
            "settings": g["settings"].iloc[0], "choices": g["choices"].iloc[0], "by_seed": by_seed,
        })
    groups = pd.DataFrame(rows)
    if groups.empty:
        return groups
    groups["trainable_params"] = groups["trainable_params"].astype("Int64")
    groups["label"] = ""
    for _, part in groups.groupby("study"):  # each study's trials are labelled among themselves
        groups.loc[part.index, "label"] = labels(part)
    return groups.sort_values(["study", "label", "task"]).reset_index(drop=True)


def compare(groups: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Add baseline, n_paired, delta and p_value: each group against the baseline group of its
    task. `baseline` is a row label, or a method name with one group per task."""
    groups = groups.assign(baseline="", is_baseline=False, n_paired=pd.NA, delta=math.nan, p_value=math.nan)
    groups["n_paired"] = groups["n_paired"].astype("Int64")
    by_label = groups["label"] == baseline
    chosen = by_label if by_label.any() else groups["method"] == baseline
    if not chosen.any():
        raise ConfigError("--baseline", f"no run of {baseline!r}; rows are {sorted(set(groups['label']))}")
    for task, base in groups[chosen].groupby("task"):
        if len(base) > 1:
            raise ConfigError("--baseline", f"{baseline!r} names {len(base)} rows on {task}: pick one of "
                              f"{list(base['label'])}")
        b = base.iloc[0]
        groups.at[base.index[0], "is_baseline"] = True
        for i in groups.index[(groups["task"] == task) & (groups.index != base.index[0])]:
            groups.loc[i, ["n_paired", "delta", "p_value"]] = pd.Series(
                paired(groups.at[i, "by_seed"], b["by_seed"]))
            groups.at[i, "baseline"] = b["label"]
    return groups
