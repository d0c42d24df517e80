"""Columns from `python -m mmpt.evaluate`: each run's RUN_DIR/eval/results.json (lm-eval's results
object) and, where it exists, eval/base_results.json (the run's backbone alone).

One column per evaluated task: the task's accuracy x100 (lm-eval's `acc`, else its first metric),
mean ± std [95% CI] (n) over the seeds of a row as in the main table; and per task with base
results, the forgetting column: the run's score minus its backbone's, over the same seeds. A row
whose runs were not evaluated on a task shows a blank cell, never a zero.
"""
import json
from pathlib import Path

import numpy as np

from mmpt.report.stats import ci95

EVAL = Path("eval")


def main_score(entry: dict) -> tuple[str, float] | None:
    """(metric, value x100) of one task's lm-eval results entry: acc, else its first number."""
    numbers = {k.split(",")[0]: v for k, v in entry.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k and k != "alias"}
    if not numbers:
        return None
    name = "acc" if "acc" in numbers else next(iter(numbers))
    return name, float(numbers[name]) * 100


def read_scores(path: Path) -> dict[str, tuple[str, float]]:
    """{task: (metric, score)} of one results file; {} when it is missing or unreadable."""
    try:
        results = json.loads(path.read_text()).get("results", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {t: s for t, e in results.items() if isinstance(e, dict) and (s := main_score(e)) is not None}


def run_dir(run: str, roots: list[Path]) -> Path:
    """A report row's folder (`run` is relative to the root, or prefixed by it with several roots)."""
    return roots[0] / run if len(roots) == 1 else Path(run)


def cell(values: list[float]) -> str:
    if not values:
        return ""
    x = np.asarray(values, dtype=float)
    if len(x) == 1:
        return f"{x[0]:.1f} (1)"
    low, high = ci95(x)
    return f"{x.mean():.1f} ± {x.std(ddof=1):.1f} [{low:.1f}, {high:.1f}] ({len(x)})"


def section(runs, groups, roots: list[Path]) -> list[str]:
    """The markdown lines of the evaluated-tasks table of `groups`' rows ([] if no run has any)."""
    tuned, base = {}, {}
    for r in runs.itertuples():
        folder = run_dir(r.run, roots) / EVAL
        tuned[r.Index], base[r.Index] = read_scores(folder / "results.json"), read_scores(folder / "base_results.json")
    tasks = sorted({t for s in tuned.values() for t in s})
    if not tasks:
        return []
    metric = {t: next(s[t][0] for s in tuned.values() if t in s) for t in tasks}
    forgetting = [t for t in tasks if any(t in b and t in tuned[i] for i, b in base.items())]
    head = [f"{t} ({metric[t]})" for t in tasks] + [f"{t} forgetting" for t in forgetting]
    lines = ["## Evaluated with lm-evaluation-harness", "",
             "python -m mmpt.evaluate's scores of each row's runs (x100): mean ± std [95% CI] (seeds); "
             "forgetting = the run minus its backbone alone (--base) on the same task. Blank: not evaluated.", "",
             "| method | trained on | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for g in groups.itertuples():
        mine = runs.index[(runs["identity"] == g.identity) & (runs["study"] == g.study)]
        cells = [cell([tuned[i][t][1] for i in mine if t in tuned[i]]) for t in tasks]
        cells += [cell([tuned[i][t][1] - base[i][t][1] for i in mine if t in tuned[i] and t in base[i]])
                  for t in forgetting]
        if any(cells):
            lines.append(f"| {g.label} | {g.task} | " + " | ".join(cells) + " |")
    return lines + [""]
