"""Examples/s of python -m mmpt.evaluate (MmptLM: shared contexts, batched) against lm-eval's own
`--model hf --model_args pretrained=<export>/base_model,peft=<export>,add_bos_token=False` on the
same LoRA run and task, in one process: the answers must be equal.

    python bench/evaluate.py [--model llama_tiny] [--task wic] [--batch 16] [--repeat 2] [--run DIR]

Without --run it trains a LoRA run first (8 steps, k_shot 64). Model loading is outside the timed
part for both; each timed part is one `lm_eval.simple_evaluate` call (task building + scoring).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, table  # noqa: E402


def train(model: str, task: str, out: Path) -> Path:
    subprocess.run([sys.executable, "train.py", f"model={model}", "method=lora", f"dataset={task}", "k_shot=64",
                    "trainer.max_steps=8", "trainer.eval_every=8", f"hydra.run.dir={out}"], check=True,
                   cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
    return out


def timed(lm, task, manager, repeat):
    from lm_eval import simple_evaluate

    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True)
        times.append(time.perf_counter() - start)
    rows = sorted(out["samples"][task], key=lambda r: r["doc_id"])
    choices = [max(range(len(r["filtered_resps"])), key=lambda c: float(r["filtered_resps"][c][0])) for r in rows]
    return statistics.median(times), choices, out["results"][task]["acc,none"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama_tiny")
    ap.add_argument("--task", default="wic")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--run", type=Path, help="an existing LoRA run (default: train one)")
    args = ap.parse_args()
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mmpt.evaluate import TASKS_DIR
    from mmpt.evaluate.lm import MmptLM
    from mmpt.export.__main__ import export

    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    run = args.run or train(args.model, args.task, tmp / "run")
    peft_dir = export(run, "peft", tmp / "peft")
    task = f"mmpt_{args.task}"
    ours = MmptLM.from_run(run, batch_size=args.batch)
    manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False, metadata={"mmpt_run": str(run)})
    t_ours, c_ours, acc_ours = timed(ours, task, manager, args.repeat)
    base = str(peft_dir / "base_model")
    hf = HFLM(pretrained=base, peft=str(peft_dir), add_bos_token=False, batch_size=args.batch,
              device="cuda" if torch.cuda.is_available() else "cpu")
    plain = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False, metadata={"pretrained": base})
    t_hf, c_hf, acc_hf = timed(hf, task, plain, args.repeat)
    n = len(c_ours)
    same = sum(a == b for a, b in zip(c_ours, c_hf))
    rows = [{"scorer": "lm_eval --model hf ... peft=", "examples": n, "s": f"{t_hf:.2f}", "examples/s": f"{n / t_hf:.0f}",
             "acc": f"{acc_hf:.4f}", "ratio": "1.00x"},
            {"scorer": "python -m mmpt.evaluate (MmptLM)", "examples": n, "s": f"{t_ours:.2f}",
             "examples/s": f"{n / t_ours:.0f}", "acc": f"{acc_ours:.4f}", "ratio": f"{t_hf / t_ours:.2f}x"}]
    print(f"{args.model} LoRA, {task}, batch {args.batch}, median of {args.repeat}; {machine()}; "
          f"load: {os.popen('uptime').read().strip()}")
    print(table(rows))
    print(f"equal answers: {same} of {n}")


if __name__ == "__main__":
    main()
