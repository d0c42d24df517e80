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


MAX_LABEL = 120  # characters: a label is read in a table cell, on a figure's axis and in a legend


def _chosen(same: pd.DataFrame) -> pd.Series | None:
    """Labels from what the user chose (the command-line overrides in which the rows differ, as
    Hydra's override dirname names a job: `lora (model=llama_tiny, model.quantization=nf4)`);
    None when the overrides do not tell the rows apart."""
    rows = list(same.get("overrides", pd.Series([{}] * len(same), index=same.index)))
    rows = [r if isinstance(r, dict) else {} for r in rows]
    keys = sorted(set().union(*rows) - {"method"})

    def value(i, row, k):  # a key one row did not override: its config value (or group choice)
        if k in rows[i]:
            return rows[i][k]
        return row["choices"].get(k) or _fmt(row["settings"].get(k, "-"))

    table = {k: [value(i, row, k) for i, (_, row) in enumerate(same.iterrows())] for k in keys}
    varying = [k for k in keys if len(set(table[k])) > 1]
    if not varying:
        return None
    named = pd.Series({idx: f"{row['method']} ({', '.join(f'{k}={table[k][i]}' for k in varying)})"
                       for i, (idx, row) in enumerate(same.iterrows())})
    return None if pd.DataFrame({"task": same["task"], "label": named}).duplicated().any() else named


def _short(named: pd.Series, tasks: pd.Series) -> pd.Series:
    """Labels over MAX_LABEL characters cut, numbered where cutting makes two rows of a task equal."""
    long = named.str.len() > MAX_LABEL
    cut = named.where(~long, named.str.slice(0, MAX_LABEL - 2) + "…)")
    clash = pd.DataFrame({"task": tasks, "label": cut}).duplicated(keep=False) & long
    for n, i in enumerate(cut.index[clash]):
        cut[i] = f"{named[i][:MAX_LABEL - 8]}… #{n})"
    return cut


def labels(groups: pd.DataFrame) -> pd.Series:
    """Row labels: the method name plus what distinguishes groups of that method within a task:
    the command-line overrides in which they differ (`lora (method.rank=4)`), else the settings
    in which they differ, a config group whose choice differs shown by its choice
    (`model=t5_tiny`), not by every key it changes. At most MAX_LABEL characters."""
    out = pd.Series(groups["method"].values, index=groups.index)
    for _, same in groups.groupby("method"):
        varying = set()
        for _, cell in same.groupby("task"):
            keys = set().union(*(s.keys() for s in cell["settings"]))
            varying |= {k for k in keys if len({json.dumps(s.get(k), default=str) for s in cell["settings"]}) > 1}
        if not varying:
            continue
        chosen = _chosen(same)
        if chosen is not None:
            out[chosen.index] = _short(chosen, same["task"])
            continue
        shown_groups = set()
        for g in {k.split(".", 1)[0] for k in varying if "." in k}:
            picked = {c.get(g) for c in same["choices"]}
            if None not in picked and len(picked) > 1:
                shown_groups.add(g)
        named = _named(same, shown_groups, varying)
        if pd.DataFrame({"task": same["task"], "label": named}).duplicated().any():
            named = _named(same, set(), varying)  # a choice that does not tell its rows apart: every key
        out[named.index] = _short(named, same["task"])
    return out


def _trials(numbers: pd.Series) -> str:
    """The trial numbers of a group's runs ("" outside searches), e.g. `3` or `0 2`."""
    known = sorted({int(n) for n in numbers.dropna()})
    return " ".join(map(str, known))


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
            "overrides": g["overrides"].iloc[0] if "overrides" in g else {},
            "trial": _trials(g["trial_number"]) if study and "trial_number" in g else "",
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
