"""The markdown tables of report.md and the columns of report.csv, from stats.group()'s rows."""
import math

import pandas as pd

from mmpt.report.runs import COST

CSV_COLUMNS = ["study", "trial", "task", "metric", "label", "method", "n", "seeds", "mean", "std", "ci95_low", "ci95_high",
               "val_mean", "trainable_params", *COST, "baseline", "n_paired", "delta", "p_value"]
ALPHA = 0.05


def csv_frame(groups: pd.DataFrame) -> pd.DataFrame:
    """Numbers in their own columns (report.csv); columns a report without --baseline lacks are
    empty, as is `trial` (a search trial's number) outside searches."""
    out = groups.copy()
    for c in ("baseline", "trial", "n_paired", "delta", "p_value"):
        if c not in out:
            out[c] = "" if c in ("baseline", "trial") else math.nan
    return out[CSV_COLUMNS]


def esc(text) -> str:
    """A markdown table cell: `|` (in a target-module regex, say) escaped, so that it does not
    split the cell; line breaks flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def not_significant(row) -> bool:
    return bool(row.get("baseline")) and not row["p_value"] < ALPHA  # NaN (untestable) counts as not


def cell(row, marks: bool) -> str:
    text = f"{row['mean']:.1f}"
    if row["n"] > 1:
        text += f" ± {row['std']:.1f} [{row['ci95_low']:.1f}, {row['ci95_high']:.1f}]"
    text += f" ({row['n']})"
    return text + (" †" if marks and not_significant(row) else "")


def _params(values) -> str:
    v = sorted({int(x) for x in values.dropna()})
    return "-" if not v else f"{v[0]:,}" if len(v) == 1 else f"{v[0]:,}-{v[-1]:,}"


def wide(groups: pd.DataFrame, marks: bool = False) -> str:
    """label x task cells `mean ± std [95% CI] (n)`, the average over tasks (rows with every
    task only) and trainable parameters (a range where tasks' heads differ)."""
    tasks = sorted(groups["task"].unique())
    metric = groups.groupby("task")["metric"].first()
    lines = ["| method | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | average | trainable params |",
             "|---" * (len(tasks) + 3) + "|"]
    for label, g in groups.groupby("label"):
        by_task = g.set_index("task")
        cells = [cell(by_task.loc[t], marks) if t in by_task.index else "-" for t in tasks]
        avg = f"{by_task['mean'].mean():.1f}" if len(by_task) == len(tasks) else "-"
        lines.append(f"| {esc(label)} | " + " | ".join(cells) + f" | {avg} | {_params(g['trainable_params'])} |")
    return "\n".join(lines)


def comparison(groups: pd.DataFrame) -> str:
    """label x task: delta to the baseline over shared seeds and the paired t-test's p-value."""
    tasks = sorted(groups["task"].unique())
    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for label, g in groups.groupby("label"):
        by_task, cells = g.set_index("task"), []
        for t in tasks:
            if t not in by_task.index:
                cells.append("-")
                continue
            if not by_task.at[t, "baseline"]:  # the baseline itself, or a task the baseline did not run
                cells.append("baseline" if by_task.at[t, "is_baseline"] else "no baseline run")
                continue
            r = by_task.loc[t]
            if r["n_paired"] < 2:
                cells.append(f"{r['delta']:+.1f} (n={r['n_paired']}: no test) †")
            else:
                p = "p<0.001" if r["p_value"] < 0.001 else f"p={r['p_value']:.3f}"
                cells.append(f"{r['delta']:+.1f} ({p}, n={r['n_paired']})"
                             + (" †" if not_significant(r) else ""))
        lines.append(f"| {esc(label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trials(groups: pd.DataFrame) -> str:
    """One study's trials: a row per setting (its trial numbers first), its seeds' mean test and val scores."""
    lines = ["| trial | trial settings | task | n | test mean ± std [95% CI] | val mean |", "|---|---|---|---|---|---|"]
    for _, r in groups.sort_values("val_mean", ascending=False).iterrows():
        lines.append(f"| {r.get('trial') or '-'} | {esc(r['label'])} | {esc(r['task'])} ({r['metric']}) | {r['n']} "
                     f"| {cell(r, False).rsplit(' (', 1)[0]} | {r['val_mean']:.1f} |")
    return "\n".join(lines)


def cost(groups: pd.DataFrame) -> str:
    """label x task: what the runs cost (metrics.json's cost keys, mean over seeds); "" when no run
    recorded them."""
    if not groups[list(COST)].notna().any().any():
        return ""
    lines = ["| method | task | " + " | ".join(COST) + " |", "|---" * (len(COST) + 2) + "|"]
    for _, r in groups.iterrows():
        cells = ["-" if pd.isna(r[k]) else f"{r[k]:,.1f}" if r[k] >= 10 else f"{r[k]:.3g}" for k in COST]
        lines.append(f"| {esc(r['label'])} | {esc(r['task'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pruned(runs: pd.DataFrame) -> str:
    """Trials a sweep's pruner stopped: listed apart, never averaged with finished runs. A
    mean_over_seeds trial's val is the mean of the seeds it finished (its step counts them)."""
    lines = ["## Pruned trials", "", "Stopped by the sweep's pruner at the step shown (for mean_over_seeds "
             "trials: the number of seeds finished); their scores are not in any table above or below.", "",
             "| trial | study | task | pruned at step | best val before (x100) |", "|---|---|---|---|---|"]
    for trial, g in runs.groupby("trial", sort=True):
        val = g["val"].astype(float).mean() * 100
        lines.append(f"| {esc(trial)} | {esc(g['study'].iloc[0] or '-')} | {g['task'].iloc[0]} ({g['val_key'].iloc[0]}) "
                     f"| {int(g['pruned_step'].iloc[0])} | {val:.1f} |")
    return "\n".join(lines)
