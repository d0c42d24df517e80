"""How long train.py takes to answer before any training: a refusal and --help (docs/benchmarks.md).

Wall time of `python train.py method=nosuch` (an unknown option: refused in one line),
`python train.py trainer.max_stepz=3` (a misspelled key) and `python train.py --help`, for this
tree and for an older commit (default: 3ce72b1, before refusals came ahead of the heavy imports),
extracted with `git archive` into a temporary folder and run with this
tree's .venv. Each command: the median of --repeat runs after one warm-up (the OS file cache
warm). The machine's load (uptime) is printed with the table: on a loaded machine imports are
slower, more so for the old tree's torch / transformers imports.

    python bench/startup.py                  # about a minute on an idle 2-core machine
    python bench/startup.py --base HEAD~3 --repeat 5
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"method=nosuch": ["method=nosuch"], "trainer.max_stepz=3": ["trainer.max_stepz=3"],
            "--help": ["--help"]}


def wall(tree: Path, args: list[str], repeat: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    times = []
    for i in range(repeat + 1):  # the first run warms the file cache and is not counted
        start = time.perf_counter()
        subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={tempfile.gettempdir()}/mmpt-bench-x"],
                       cwd=tree, env=env, capture_output=True, timeout=600)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="3ce72b1", help="the commit to compare with")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmpt-startup-") as tmp:
        archive = subprocess.run(["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        rows = []
        for name, argv in COMMANDS.items():
            before, after = wall(Path(tmp), argv, args.repeat), wall(ROOT, argv, args.repeat)
            rows.append((name, before, after))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"python train.py ... wall time, median of {args.repeat} (after one warm-up); {load}")
    print(f"| command | {args.base} (s) | this tree (s) | ratio |\n|---|---|---|---|")
    for name, before, after in rows:
        print(f"| {name} | {before:.2f} | {after:.2f} | {after / before:.2f}x |")


if __name__ == "__main__":
    main()
