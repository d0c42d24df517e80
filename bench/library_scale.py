"""Expert libraries at scale: `python bench/library.py --scale [E ...]` (default 8 64 256).

Per library size E: in one process, `build` of E runs with random LoRA experts (rank 8 on q and v
of the `mini` T5 shape) and `cluster` (MBC, k = 8); in a fresh process (so its peak memory is the
routing's), eval throughput (rank scoring, batch 16, 64-token sources) of arrow (top-4) and
phatgoose (top-2, random gates) against one LoRA measured in that same process, adapter memory,
and the process's peak resident memory, against a process holding only the one LoRA.
"""
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, table, timeit  # noqa: E402
from bench.library import OPTS, adapter_mb, batch, fake_run, random_gates  # noqa: E402
from mmpt.data import get_task  # noqa: E402
from mmpt.library import Library  # noqa: E402
from mmpt.library.extract import build  # noqa: E402
from mmpt.library.mbc import ClusterOptions, cluster  # noqa: E402
from mmpt.library.methods import prototypes  # noqa: E402
from mmpt.library.phatgoose import GATES  # noqa: E402
from mmpt.recipes.library import prepare_library_model  # noqa: E402

BATCH, SOURCE = 16, 64


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def build_worker(n: int, out: Path) -> dict:
    """Build (and cluster) a library of n random experts at `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(n)]
        for i, run in enumerate(runs):
            fake_run(run, "mini", i)
        start = time.perf_counter()
        lib = Library(build(out, runs))
        built = time.perf_counter() - start
    start = time.perf_counter()
    cluster(lib, ClusterOptions(k=min(8, n)))
    clustered = time.perf_counter() - start
    lib.cached(GATES, lambda: random_gates(lib))
    lib.cached("arrow_prototypes", lambda: prototypes(lib.lora_stack()))
    return {"build s": built, "cluster s": clustered}


def route_worker(lib_dir: str) -> dict:
    """Eval throughput and memory of one LoRA and (with a library) arrow and phatgoose over it, in
    this process: its peak memory is the routing's, the build ran elsewhere."""
    data = batch(BATCH, SOURCE)
    with tempfile.TemporaryDirectory() as tmp:
        single = fake_run(Path(tmp) / "run", "mini", 0).eval()
    lora_s = timeit(lambda: single.score(data), repeat=3, warmup=1)
    row = {"lora ex/s": BATCH / lora_s, "lora MB": adapter_mb(single)}
    del single  # the library's model reuses its memory: the peak is one model's, plus the experts
    gc.collect()
    if lib_dir != "-":
        lib = Library(lib_dir)
        for ftype in ("arrow", "phatgoose"):
            model, _ = prepare_library_model(lib, ftype, OPTS, get_task("cb"))
            model.eval()
            s = timeit(lambda: model.score(data), repeat=3, warmup=1)
            row[f"{ftype} ex/s"], row[f"{ftype} MB"] = BATCH / s, adapter_mb(model)
            del model
    return {**row, "peak MB": peak_mb()}


def call(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--scale-worker", *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    if "--scale-worker" in sys.argv:
        what, *rest = sys.argv[sys.argv.index("--scale-worker") + 1:]
        print(json.dumps(build_worker(int(rest[0]), Path(rest[1])) if what == "build" else route_worker(rest[0])))
        return
    sizes = [int(a) for a in sys.argv[sys.argv.index("--scale") + 1:]] or [8, 64, 256]
    base = call("route", "-")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            lib = Path(tmp) / f"lib{n}"
            r = {**call("build", n, lib), **call("route", lib)}
            grown = r["peak MB"] - base["peak MB"]
            one = r["lora MB"]
            rows.append({"experts": n, "build s": f"{r['build s']:.1f}", "cluster s": f"{r['cluster s']:.2f}",
                         "one LoRA ex/s": f"{r['lora ex/s']:.0f}",
                         "arrow ex/s": f"{r['arrow ex/s']:.0f} ({r['arrow ex/s'] / r['lora ex/s']:.2f}x)",
                         "phatgoose ex/s": f"{r['phatgoose ex/s']:.0f} ({r['phatgoose ex/s'] / r['lora ex/s']:.2f}x)",
                         "arrow adapter MB": f"{r['arrow MB']:.1f} ({r['arrow MB'] / (n * one):.2f}x E x one)",
                         "peak MB over one LoRA": f"{grown:.0f} ({grown / (n * one):.1f}x E x one)"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each size as it is done
    print(f"expert libraries at scale, mini T5 shape (random weights), LoRA rank 8 on q, v; eval = rank "
          f"scoring of batch {BATCH}, source {SOURCE} tokens, 2 choices; one LoRA {base['lora MB']:.2f} MB, "
          f"one-LoRA process peak {base['peak MB']:.0f} MB; {machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
