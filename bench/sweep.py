"""What pruning and a second worker buy a hyperparameter search (docs/benchmarks.md).

The same 16-trial TPE search (hparams_search=lora: LoRA lr and rank) on MiniLM / SST-2 (k-shot
train and val splits, so an evaluation is short) is run
  - without pruning, one worker (the sweep process; all cores);
  - with hyperband (rungs at the evaluations), one worker;
  - with one worker (the search without pruning: the same run);
  - with two workers on one study (two sweep processes, one thread each, max_trials=16).
and, apart (--part threads), one trial's run alone and two at once, each process with all
cores' threads (what every process took before trials shared the cores) or with its share.
For each search: the training steps actually taken (from each trial's metrics.jsonl), the wall time, the
trials completed / pruned, and the best val accuracy of a completed trial. The seed-to-seed noise
of that best val is the std over 3 training seeds of the unpruned search's best setting.

    python bench/sweep.py                       # MiniLM, about 12 minutes on an idle 2-core machine
    python bench/sweep.py --model t5_tiny       # the plumbing only (random weights: val is noise)
    python bench/sweep.py --part threads        # only the threads table (a few minutes)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # the search's fixed settings per backbone
    "minilm": ["model=minilm", "dataset=sst2", "k_shot=256", "trainer.batch_size=16", "dataset.max_length=64",
               "optimizer.groups.head.lr=1e-3"],
    "t5_tiny": ["model=t5_tiny", "dataset=cb", "dataset.max_length=64"],
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def train_cmd(args, *extra, multirun: bool = False) -> list[str]:
    return [sys.executable, "train.py", *(["-m"] if multirun else []), *MODELS[args.model], "method=lora",
            f"trainer.max_steps={args.steps}",
            f"trainer.eval_every={args.eval_every}", "trainer.save_predictions=false", *extra]


def search(args, name: str, workers: int, *extra) -> dict:
    out = args.out / name
    cmd = train_cmd(args, "hparams_search=lora", f"hydra.sweeper.storage=sqlite:///{out}.db",
                    f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out}", f"hydra.sweeper.n_trials={args.trials}",
                    f"hydra.sweeper.max_trials={args.trials}", "hydra.sweeper.sampler.seed=0", *extra, multirun=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(args.out / f"{name}_{w}.log", "w"),
                              stderr=subprocess.STDOUT) for w in range(workers)]
    if any(p.wait() for p in procs):
        sys.exit(f"{name}: a worker failed (logs: {args.out}/{name}_*.log)")
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out}.db")
    steps = 0
    for t in study.trials:  # the steps each trial trained: its last logged step
        lines = (out / str(t.number) / "metrics.jsonl").read_text().splitlines()
        steps += max(json.loads(line)["step"] for line in lines)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value)
    return {"way": name, "workers": workers, "trials complete / pruned": f"{len(done)} / "
            f"{sum(t.state.name == 'PRUNED' for t in study.trials)}", "training steps": steps,
            "wall s": round(wall), "best val": round(best.value, 4), "params": best.params}


def noise(args, params: dict) -> float:
    """std over 3 training seeds of the val accuracy of one setting (seed-to-seed noise)."""
    out = args.out / "noise"
    overrides = [f"{k}={v}" for k, v in params.items()]
    proc = subprocess.run(train_cmd(args, *overrides, "mean_over_seeds=[1,2,3]", f"hydra.run.dir={out}"), cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the noise runs failed: {proc.stderr[-500:]}")
    vals = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["val/acc"] for s in (1, 2, 3)]
    return statistics.stdev(vals)


def at_once(args, n: int, threads: int | None) -> float:
    """Wall seconds of n single runs (one setting of the search) started together."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    extra = ["optimizer.groups.adapters.lr=1e-3", "method.rank=8"] + ([f"trainer.threads={threads}"] if threads else [])
    start = time.perf_counter()
    procs = [subprocess.Popen(train_cmd(args, *extra, f"hydra.run.dir={args.out}/threads/{n}_{threads}_{i}"), cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
    if any(p.wait() for p in procs):
        sys.exit("a threads run failed")
    return time.perf_counter() - start


def threads_part(args, cores: int) -> None:
    print(f"before: {uptime()}", flush=True)
    rows = [("alone, all cores", at_once(args, 1, None)), (f"two at once, {cores} threads each", at_once(args, 2, cores)),
            (f"two at once, {max(1, cores // 2)} thread(s) each (the sweep's share)", at_once(args, 2, max(1, cores // 2)))]
    print(f"after: {uptime()}\n\n| one {args.steps}-step trial ({args.model}) | wall s | vs alone |\n|---|---|---|")
    for name, wall in rows:
        print(f"| {name} | {wall:.0f} | {wall / rows[0][1]:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40, help="training steps of a trial that is not pruned")
    ap.add_argument("--eval-every", type=int, default=5, help="steps between evaluations (= pruning reports, rungs)")
    ap.add_argument("--out", type=Path, default=ROOT / "multirun" / "bench_sweep")
    ap.add_argument("--part", choices=["search", "threads", "all"], default="all")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.db"):
        old.unlink()  # each way is a fresh study
    cores = len(os.sched_getaffinity(0))
    if args.part in ("threads", "all"):
        threads_part(args, cores)
    if args.part == "threads":
        return
    print(f"before: {uptime()}", flush=True)
    plain = search(args, "no_pruning", 1)
    hyper = search(args, "hyperband", 1, "hydra/sweeper/pruner=hyperband", f"hydra.sweeper.pruner.min_resource={args.eval_every}",
                   f"hydra.sweeper.pruner.max_resource={args.steps}", "hydra.sweeper.pruner.reduction_factor=3")
    two = search(args, "two_workers", 2, f"trainer.threads={max(1, cores // 2)}")
    sd = noise(args, plain["params"])
    print(f"after: {uptime()}\n")
    one = {**plain, "way": "one_worker (= no_pruning)"}
    rows = [plain, hyper, one, two]
    keys = ["way", "workers", "trials complete / pruned", "training steps", "wall s", "best val"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print(f"\n{args.model}, {args.trials} trials of {args.steps} steps (eval every {args.eval_every}), {cores} cores")
    print(f"hyperband / no pruning: training steps {hyper['training steps'] / plain['training steps']:.2f}x, "
          f"wall {hyper['wall s'] / plain['wall s']:.2f}x, best val {hyper['best val'] - plain['best val']:+.4f} "
          f"(seed-to-seed std of the unpruned best setting: {sd:.4f})")
    print(f"two workers / one worker: wall {two['wall s'] / plain['wall s']:.2f}x")


if __name__ == "__main__":
    main()
