"""python -m mmpt.report DIR [--out DIR]: markdown + CSV table and a PNG of the runs under DIR."""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmpt.report.aggregate import collect, sweep_summary, table  # noqa: E402


def plot(runs, path: Path) -> None:
    means = runs.groupby(["task", "method"])["score"].mean().unstack("method") * 100
    errs = runs.groupby(["task", "method"])["score"].std(ddof=0).unstack("method") * 100
    ax = means.plot.bar(yerr=errs, figsize=(max(6, 1.2 * len(means)), 4), capsize=2)
    ax.set_ylabel("test score (%)")
    ax.set_title("mean ± std over seeds")
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmpt.report", description=__doc__)
    ap.add_argument("dir", type=Path, help="an outputs/ or multirun/ folder (searched recursively)")
    ap.add_argument("--out", type=Path, default=None, help="where to write report.{md,csv,png} (default: DIR)")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    runs, incomplete = collect(args.dir)
    lines = [f"# Results in {args.dir}", ""]
    if runs.empty:
        lines.append("No finished runs found.")
    else:
        t = table(runs)
        lines += ["Test score of the best-val weights, % (mean ± std over seeds, number of runs).", "",
                  t.to_markdown(), ""]
        t.to_csv(out / "report.csv")
        plot(runs, out / "report.png")
    lines.append(f"{len(runs)} finished runs; {incomplete} incomplete runs ignored.")
    sweep = sweep_summary(args.dir)
    if sweep is not None:
        best, tried = sweep
        lines += ["", "## Sweep", "", f"Best value: {best.get('best_value')}", "",
                  "| parameter | best |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in best.get("best_params", {}).items()], "",
                  "Tried:", "", tried.to_markdown(index=False)]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
