"""python -m mmpt.report DIR [DIR ...] [--baseline METHOD] [--out DIR]: report.md, report.csv,
report.png and learning_curves.png of the runs under the folders (several: one report, e.g. new
runs beside the baseline runs of another sweep). Runs are averaged only when they differ in nothing but
the seed; hyperparameter-search trials get their own table."""
import argparse
import sys
from pathlib import Path

import pandas as pd

from mmpt.errors import MMPTError
from mmpt.report import evaluated, plots, tables
from mmpt.report.runs import collect, sweep_best
from mmpt.report.stats import compare, group

INTRO = ("Test score of the best-val checkpoint in the task's main metric (named in each column; x100): "
         "mean ± std over seeds [95% confidence interval of the mean, t-distribution] (number of seeds). "
         "Runs are averaged only when their configs differ in nothing but the seed (and keys that cannot "
         "change results: paths, logging, resume); a label names the settings in which rows of one "
         "method differ.")


RUNS = "folders with metrics.json and .hydra/config.yaml, as train.py and finetune.py write them"


def collect_all(roots: list[Path]) -> tuple[pd.DataFrame, int]:
    """The runs under every root (their `run` names prefixed by the root when there are several).
    A root with no run at all (e.g. a mistyped or empty folder) is refused, as is no finished run."""
    frames, incomplete = [], 0
    for root in roots:
        runs, n = collect(root)
        if runs.empty and not n:
            raise MMPTError(f"{root}: no runs in it or under it (expected {RUNS}); nothing written")
        if len(roots) > 1 and not runs.empty:
            runs["run"] = [f"{root.as_posix()}/{r}" for r in runs["run"]]
        frames.append(runs)
        incomplete += n
    runs = pd.concat(frames, ignore_index=True)
    if runs.empty:
        raise MMPTError(f"no finished runs found under {', '.join(map(str, roots))}: {incomplete} incomplete "
                        "(no metrics.json: killed, failed or still running); nothing written")
    return runs, incomplete


def report(roots: list[Path], out: Path, baseline: str | None) -> str:
    runs, incomplete = collect_all(roots)  # before anything is written: a refused report writes nothing
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Results in {', '.join(r.as_posix() for r in roots)}", ""]
    pruned = runs[runs["pruned"]]
    runs = runs[~runs["pruned"]].copy()  # pruned trials never join finished runs
    pruned_table = [tables.pruned(pruned), ""] if not pruned.empty else []
    if runs.empty:
        return "\n".join(lines + pruned_table + ["No finished runs found.", f"{incomplete} incomplete runs ignored."])
    groups = group(runs)
    if baseline:
        groups = compare(groups, baseline)
    tables.csv_frame(groups).to_csv(out / "report.csv", index=False)
    main = groups[groups["study"] == ""]
    lines += [INTRO, ""]
    if not main.empty:
        lines += [tables.wide(main, marks=bool(baseline)), ""]
        lines += evaluated.section(runs, main, roots)  # python -m mmpt.evaluate's tasks, forgetting
    if baseline:
        lines += [f"## Paired comparison with {baseline}", "",
                  f"Per task, each row minus {baseline} over the seeds both ran (same seed = same data order "
                  "and k-shot sample): mean difference and the two-sided p-value of a paired t-test "
                  "(scipy.stats.ttest_rel). † = not significant at 0.05, or fewer than 2 shared seeds "
                  "(no test).", "", tables.comparison(main if not main.empty else groups), ""]
    costs = tables.cost(main if not main.empty else groups)
    if costs:
        lines += ["## Cost", "", "Mean over seeds of each run's cost (metrics.json): peak memory (GPU: allocated; "
                  "CPU: the process's resident set), training tokens per second, trained parameters on disk and "
                  "the frozen backbone in memory, in MB (2^20 bytes).", "", costs, ""]
    for study, part in groups[groups["study"] != ""].groupby("study"):
        lines += [f"## Search trials: {study}", "", "Each trial's settings are its own row (never averaged "
                  "with other trials); best validation score first.", "", tables.trials(part), ""]
    lines += pruned_table
    for where, best in [(w if len(roots) == 1 else f"{root.as_posix()}/{w}", b)
                        for root in roots for w, b in sweep_best(root) if b.get("best_params") is not None]:
        params = ", ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items())
        lines.append(f"Sweep{f' `{where}`' if where not in ('', '.') else ''}: best value {best.get('best_value')} at {params}.")
    repeated = [f"{r.label} on {r.task} (seeds {r.seeds})" for r in groups.itertuples()
                if len(set(r.seeds.split())) < r.n]
    if repeated:  # e.g. one config run twice, or fine-tuned from two equal pre-trainings
        lines.append("Seeds run more than once (their mean is the pair in paired tests): " + "; ".join(repeated) + ".")
    lines += ["", f"{len(runs)} finished runs; {incomplete} incomplete runs ignored"
              + (f"; {pruned['trial'].nunique()} pruned trials listed apart." if not pruned.empty else ".")]

    # Figures: the main table's rows; a folder holding only searches shows its trials
    trial = groups["trial"].map(lambda t: f" #{t}" if t else "") if "trial" in groups else ""
    shown = main if not main.empty else groups.assign(label=groups["study"] + trial + ": " + groups["label"])
    colour = plots.colours(shown["label"])
    plots.bars(shown, out / "report.png", colour)
    label = dict(zip(zip(shown["identity"], shown["study"]), shown["label"]))
    runs["label"] = [label.get(k) for k in zip(runs["identity"], runs["study"])]
    plots.curves(runs[runs["label"].notna()], out / "learning_curves.png", colour, pruned)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmpt.report", description=__doc__)
    ap.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                    help="outputs/ or multirun/ folders (searched recursively), reported together")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the report files (default: DIR; required with several DIRs)")
    ap.add_argument("--baseline", default=None, help="a method (row label) to compare every row with, per task")
    args = ap.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            print(f"error: {d} is not a directory", file=sys.stderr)
            return 2
    if len(args.dirs) > 1 and args.out is None:
        print("error: several DIRs: name the folder for the report with --out", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    try:
        text = report(args.dirs, out, args.baseline) + "\n"
    except MMPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (out / "report.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
