"""python -m mmpt.evaluate RUN_DIR|SWEEP_DIR --tasks T1,T2 [--batch-size N] [--limit N] [--num-fewshot K]
[--base] [--include-path DIR] [--log-samples] [--task-id NAME] [--force]; python -m mmpt.evaluate --tasks-dir

Scores finished runs on lm-evaluation-harness tasks with `lm_eval.simple_evaluate` and MmptLM; the
results go to RUN_DIR/eval/ (docs/evaluation.md). mmpt's own tasks (mmpt_<dataset>) are found
without --include-path; --tasks-dir prints their folder for plain lm_eval.
"""
import argparse
import difflib
import logging
import sys
from pathlib import Path

from mmpt.errors import MMPTError
from mmpt.evaluate import TASKS_DIR, results
from mmpt.evaluate.sweep import finished_runs

log = logging.getLogger("mmpt.evaluate")
MISSING = ("lm-eval is not installed: install mmpt's `eval` extra (pip install -e '.[eval]'; "
           "scripts/install.sh installs it)")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m mmpt.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path,
                   help="a finished train.py or finetune.py run, or a folder of runs (a sweep)")
    p.add_argument("--tasks", help="comma-separated lm-eval task names (mmpt_rte, boolq, a YAML's task ...)")
    p.add_argument("--batch-size", type=int, default=16, help="contexts scored together (default 16)")
    p.add_argument("--limit", type=int, help="score the first N documents of each task")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: the task's)")
    p.add_argument("--base", action="store_true", help="the run's backbone alone, no adapter -> eval/base_results.json")
    p.add_argument("--include-path", type=Path, action="append", default=[], help="a folder of task YAMLs")
    p.add_argument("--log-samples", action="store_true", help="also write lm-eval's per-document samples files")
    p.add_argument("--task-id", help="a multi-task run routed by task: the task whose routing to use")
    p.add_argument("--force", action="store_true", help="sweeps: evaluate tasks a run already has results for")
    p.add_argument("--tasks-dir", action="store_true", help="print the folder of mmpt's task YAMLs and exit")
    return p.parse_args(argv)


def check_args(args) -> None:
    if args.run_dir is None or not args.tasks:
        raise MMPTError("give RUN_DIR and --tasks (e.g. python -m mmpt.evaluate outputs/run --tasks mmpt_rte)")
    if args.limit is not None and args.limit < 1:
        raise MMPTError(f"--limit {args.limit}: expected an integer >= 1 (documents per task)")
    if args.batch_size < 1:
        raise MMPTError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    for d in args.include_path:
        if not d.is_dir():
            raise MMPTError(f"--include-path {d}: not a folder of task YAMLs")
    if not args.run_dir.is_dir():
        raise MMPTError(f"{args.run_dir} is not a directory")


def task_manager(include: list[Path], tasks: list[str], run_dir):
    """lm-eval's TaskManager with mmpt's task YAMLs and --include-path's; `mmpt_run` tells mmpt's
    tasks whose tokenizer to use. lm-eval's own ~15,000 tasks are indexed (~25 s on a loaded
    2-core machine) only when a task is not among these."""
    from lm_eval.tasks import TaskManager

    paths, meta = [str(TASKS_DIR), *map(str, include)], {"mmpt_run": str(run_dir)}
    local = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
    if all(t in local.all_tasks for t in tasks):
        return local
    return TaskManager(include_path=paths, metadata=meta)


def check_tasks(names: list[str], manager) -> None:
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise MMPTError(f"--tasks: unknown task {name!r}{hint} (a task YAML elsewhere: --include-path DIR)")


def evaluate_run(run, tasks, args, sweep: bool, manager=None) -> bool:
    """Score one run on its tasks still to do; False when there were none."""
    import lm_eval

    from mmpt.evaluate.lm import MmptLM

    path = results.path_of(run, args.base)
    done = results.evaluated(path)  # an unreadable file stops here, before any scoring
    todo = [t for t in tasks if args.force or not sweep or t not in done]
    if not todo:
        return False
    lm = MmptLM.from_run(run, args.task_id, args.base, args.batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=todo, num_fewshot=args.num_fewshot, limit=args.limit,
                                  log_samples=args.log_samples,
                                  task_manager=manager or task_manager(args.include_path, todo, run))
    results.save(run, out, args.base)
    if not sweep:
        print(lm_eval.utils.make_table(out))
    print(f"{run}: {', '.join(todo)} -> {path}")
    return True


def run(args) -> int:
    check_args(args)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MMPTError(MISSING) from None
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its INFO lines and custom_dataset notice
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    runs, skipped, sweep = finished_runs(args.run_dir)
    manager = task_manager(args.include_path, tasks, runs[0])
    check_tasks(tasks, manager)
    for path in runs:  # every results file readable before anything is scored
        results.evaluated(results.path_of(path, args.base))
    for line in skipped:
        print(line)
    if not sweep:
        evaluate_run(runs[0], tasks, args, sweep=False, manager=manager)
        return 0
    from mmpt.engine import progress

    bar = progress.bar(len(runs), "runs")
    for path in runs:
        try:
            if not evaluate_run(path, tasks, args, sweep=True):
                print(f"{path}: already evaluated on {', '.join(tasks)} (--force to evaluate again)")
        except MMPTError as e:  # a run it refuses (an encoder run, a broken one): the others still go on
            print(f"{path}: skipped ({e})")
        bar.update(1)
    bar.close()
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.tasks_dir:
        print(TASKS_DIR)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return run(args)
    except MMPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
