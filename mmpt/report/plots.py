"""report.png (test score per task with 95% CIs) and learning_curves.png (val metric vs step).

One panel per task, since tasks have different metrics (each named on its axis). Rows keep one
colour in both figures; with more rows than a qualitative palette has, colours come from a
continuous map so none repeats. Labels sit on the axis or in a legend outside the panels,
wrapped, so that a figure keeps its width (at most MAX_PX) whatever the labels and with 2 to 40
rows.
"""
import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402


DPI = 120
MAX_PX = 2400  # the widest a figure gets (3 panels a row)


def wrap(label: str, width: int = 40) -> str:
    return textwrap.fill(str(label), width, break_long_words=True, break_on_hyphens=False)


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
    width = min(width * cols, MAX_PX / DPI - 0.2)  # bbox_inches="tight" adds a few points of padding
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows + extra), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def bars(groups: pd.DataFrame, path: Path, colour: dict) -> None:
    """Horizontal bars: one per row label, best validation score on top; mean test score, error
    bar = 95% CI (none for n=1: no interval, no tick)."""
    tasks = sorted(groups["task"].unique())
    lines = groups["label"].map(lambda lab: wrap(lab).count("\n") + 1)
    height = groups.assign(h=0.25 + 0.17 * lines).groupby("task")["h"].sum().max()
    fig, axes = _panels(len(tasks), 5.5, 1.2 + height)
    for ax, task in zip(axes, tasks):
        g = groups[groups["task"] == task].sort_values(["val_mean", "label"], ascending=[True, False],
                                                         na_position="first")
        y = np.arange(len(g))
        ax.barh(y, g["mean"], height=0.7, color=[colour[lab] for lab in g["label"]])
        ci = (g["n"] > 1).to_numpy() & g["ci95_low"].notna().to_numpy()
        if ci.any():
            err = np.vstack([g["mean"] - g["ci95_low"], g["ci95_high"] - g["mean"]])[:, ci]
            ax.errorbar(g["mean"].to_numpy()[ci], y[ci], xerr=err, fmt="none", ecolor="black", capsize=3, elinewidth=1)
        ax.set_yticks(y, [f"{wrap(lab)} (n={n})" for lab, n in zip(g["label"], g["n"])], fontsize=8)
        ax.set_xlabel(f"test {g['metric'].iloc[0]} (x100)")
        ax.set_title(task)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("mean over seeds, best validation score on top; error bars: 95% CI (t-distribution)", fontsize=9)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
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


def _pruned_curves(ax, pruned: pd.DataFrame) -> None:
    """A search's pruned trials, one dashed grey line each, a cross where the pruner stopped it."""
    for _, r in pruned.iterrows():
        c = read_curve(r["curve"], r["val_key"]) * 100
        if c.empty:
            continue
        ax.plot(c.index, c, color="0.45", ls="--", lw=1, label="pruned trials (× = stopped)")
        ax.plot(c.index[-1:], c.iloc[-1:], color="0.45", marker="x", ms=7, ls="none")


def curves(runs: pd.DataFrame, path: Path, colour: dict, pruned: pd.DataFrame | None = None) -> None:
    """Per task, the val main metric against step for each row label: mean over its seeds, band
    = mean ± std over the seeds that evaluated at that step; a search's pruned trials dashed.
    The legend sits below the panels, its labels wrapped, in as many columns as fit the width."""
    pruned = pruned if pruned is not None else runs.iloc[:0]
    tasks = sorted(set(runs["task"]) | set(pruned["task"]))
    ncol_panels = min(len(tasks), 3)
    legend_cols = max(1, min(runs["label"].nunique() + (not pruned.empty), int(5 * ncol_panels // 3.6)))
    entries = [wrap(lab, 48).count("\n") + 1 for lab in sorted(set(runs["label"]))] + [1] * (not pruned.empty)
    legend_h = 0.7 + 0.16 * sum(entries) / legend_cols
    fig, axes = _panels(len(tasks), 5, 3.5, extra=legend_h)
    for ax, task in zip(axes, tasks):
        _pruned_curves(ax, pruned[pruned["task"] == task])
        for label, g in runs[runs["task"] == task].groupby("label"):
            table = pd.concat([read_curve(c, k) * 100 for c, k in zip(g["curve"], g["val_key"])], axis=1)
            if table.empty:
                continue
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0)
            ax.plot(mean.index, mean, color=colour[label], label=wrap(label, 48), lw=1.5, marker=".")
            ax.fill_between(mean.index, mean - std, mean + std, color=colour[label], alpha=0.2, lw=0)
        key = pd.concat([runs, pruned]).loc[lambda d: d["task"] == task, "val_key"].dropna()
        ax.set_ylabel(f"{key.iloc[0] if len(key) else 'val'} (x100)")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(left=0)  # steps from the start (one evaluation alone otherwise gets fractional ticks)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    handles = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=legend_cols, fontsize=8,
               title="mean over seeds, band ± std", title_fontsize=8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
