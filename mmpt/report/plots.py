"""report.png (test score per task with 95% CIs) and learning_curves.png (val metric vs step).

One panel per task, since tasks have different metrics (each named on its axis). Rows keep one
colour in both figures; with more rows than a qualitative palette has, colours come from a
continuous map so none repeats. Labels sit on the axis or in a legend outside the panels.
"""
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402


def colours(labels) -> dict:
    labels = sorted(set(labels))
    n = len(labels)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    points = range(n) if n <= 20 else np.linspace(0.05, 0.95, n)
    return {lab: cmap(p) for lab, p in zip(labels, points)}


def _panels(n: int, width: float, height: float, extra: float = 0.0):
    """A grid of n panels, 3 per row; `extra` inches of height for a legend below them."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + extra), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def bars(groups: pd.DataFrame, path: Path, colour: dict) -> None:
    """Horizontal bars: one per row label, mean test score, error bar = 95% CI (none for n=1)."""
    tasks = sorted(groups["task"].unique())
    n_rows = groups.groupby("task").size().max()
    fig, axes = _panels(len(tasks), 5.5, 1.4 + 0.35 * n_rows)
    for ax, task in zip(axes, tasks):
        g = groups[groups["task"] == task].sort_values("label", ascending=False)
        err = np.vstack([g["mean"] - g["ci95_low"], g["ci95_high"] - g["mean"]])
        y = np.arange(len(g))
        ax.barh(y, g["mean"], height=0.7, color=[colour[lab] for lab in g["label"]],
                xerr=np.nan_to_num(err), capsize=3, error_kw={"elinewidth": 1})
        ax.set_yticks(y, [f"{lab} (n={n})" for lab, n in zip(g["label"], g["n"])], fontsize=8)
        ax.set_xlabel(f"test {g['metric'].iloc[0]} (x100)")
        ax.set_title(task)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("mean over seeds, error bars: 95% CI (t-distribution)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def read_curve(path, key: str) -> pd.Series:
    """val `key` by step from a run's metrics.jsonl (the last eval at a step wins: a resumed run
    may repeat one)."""
    points = {}
    if key and Path(path).exists():
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.get("event") == "eval" and key in row:
                points[row["step"]] = row[key]
    return pd.Series(points, dtype=float).sort_index()


def curves(runs: pd.DataFrame, path: Path, colour: dict) -> None:
    """Per task, the val main metric against step for each row label: mean over its seeds, band
    = mean ± std over the seeds that evaluated at that step."""
    tasks = sorted(runs["task"].unique())
    ncol = min(len(tasks), 3)
    fig, axes = _panels(len(tasks), 5, 3.5, extra=0.5 + 0.2 * math.ceil(runs["label"].nunique() / ncol))
    for ax, task in zip(axes, tasks):
        for label, g in runs[runs["task"] == task].groupby("label"):
            table = pd.concat([read_curve(c, k) * 100 for c, k in zip(g["curve"], g["val_key"])], axis=1)
            if table.empty:
                continue
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0)
            ax.plot(mean.index, mean, color=colour[label], label=label, lw=1.5, marker=".")
            ax.fill_between(mean.index, mean - std, mean + std, color=colour[label], alpha=0.2, lw=0)
        key = runs.loc[runs["task"] == task, "val_key"].dropna()
        ax.set_ylabel(f"{key.iloc[0] if len(key) else 'val'} (x100)")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(task)
        ax.grid(alpha=0.3)
    handles = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol, fontsize=8,
               title="mean over seeds, band ± std", title_fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
