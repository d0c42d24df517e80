"""python -m mmpt.library build --out DIR SOURCES... | show DIR | cluster DIR --k K | gates DIR | export DIR --to peft --out OUT

build: the experts of finished train.py runs (a run dir, or a multirun dir: every run under it;
lora runs give one expert per run, named after its task; a poly_lora run one per skill) into a
new library directory. Experts of different backbones, targets or ranks are refused with one line.
show: the library's index as a table.
cluster: MBC (mbc.py): the tasks grouped by their experts' weights, into DIR/clusters.json.
gates: PhatGOOSE gates (gates.py), trained once per expert on its own run and task, into DIR's cache.
export: PEFT LoRA folders of every expert that peft's create_arrow_model loads (peft_export.py).
docs/library-algorithms.md shows them at work.
"""
import argparse
import logging
import sys

from mmpt.errors import MMPTError
from mmpt.library.gates import GateOptions
from mmpt.library.mbc import ClusterOptions
from mmpt.models.backbone import backbone_name


def table(lib) -> str:
    """The index as a fixed-width table, after a header naming what all experts share."""
    c = lib.compat
    targets = c.get("targets") or []
    head = [f"library {lib.path} (id {lib.id}): {len(lib.names)} {lib.kind} experts",
            f"backbone {backbone_name(lib.index['model'])}"
            + (f", rank {c['rank']}" if "rank" in c else "")
            + (f", {len(targets)} target modules ({targets[0]}, ...)" if targets else "")]
    cols = ("name", "method", "task", "skill", "val_metric", "val_score", "source")
    rows = [["-" if e.get(k) is None else (f"{e[k]:.4f}" if isinstance(e.get(k), float) else str(e[k]))
             for k in cols] for e in lib.experts]
    widths = [max(len(k), *(len(r[i]) for r in rows)) for i, k in enumerate(cols)]
    line = lambda cells: "  ".join(s.ljust(w) for s, w in zip(cells, widths)).rstrip()
    return "\n".join([*head, "", line(cols), line("-" * w for w in widths), *map(line, rows)])


def run_cluster(lib, args) -> int:
    from mmpt.library.mbc import cluster, table as cluster_table, write_clusters
    opts = ClusterOptions(k=args.k, sparsity=args.sparsity, components=args.components)
    groups, used = cluster(lib, opts)
    if used < opts.components:
        print(f"TruncatedSVD: {used} components, not {opts.components}: the library has {len(lib.names)} experts")
    write_clusters(lib, groups)
    print(cluster_table(groups))
    print(f"wrote {len(groups)} clusters to {lib.path / 'clusters.json'}")
    return 0


def run_gates(lib, args) -> int:
    from mmpt.library.gates import library_gates
    from mmpt.library.phatgoose import GATES
    if lib.stored(GATES) is not None:
        print(f"library {lib.path} already has PhatGOOSE gates ({lib.path / 'cache' / GATES}.safetensors)")
        return 0
    opts = GateOptions(**{k: getattr(args, k) for k in vars(GateOptions())})
    gates = library_gates(lib, opts)
    print(f"trained PhatGOOSE gates of {len(lib.names)} experts at {len(gates)} layers ({opts.steps} steps each)")
    return 0


def run_export(lib, args) -> int:
    from mmpt.library.peft_export import export_peft
    out = export_peft(lib, args.out, args.general)
    print(f"wrote {len(lib.names)} PEFT LoRA folders to {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmpt.library", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="collect the experts of finished runs into a new library")
    b.add_argument("--out", required=True, help="a new directory")
    b.add_argument("sources", nargs="+", help="train.py run dirs or multirun dirs")
    s = sub.add_parser("show", help="print a library's index")
    s.add_argument("library")
    c = sub.add_parser("cluster", help="MBC: group the tasks by their experts' weights (DIR/clusters.json)")
    c.add_argument("library")
    c.add_argument("--k", type=int, default=ClusterOptions.k, help="clusters (default %(default)s)")
    c.add_argument("--sparsity", type=float, default=ClusterOptions.sparsity, help="share of each row zeroed")
    c.add_argument("--components", type=int, default=ClusterOptions.components, help="TruncatedSVD dimensions")
    g = sub.add_parser("gates", help="train PhatGOOSE gates, once per expert")
    g.add_argument("library")
    for key, value in vars(GateOptions()).items():
        g.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    e = sub.add_parser("export", help="PEFT LoRA folders that peft's create_arrow_model loads")
    e.add_argument("library")
    e.add_argument("--to", choices=["peft"], required=True)
    e.add_argument("--out", required=True, help="a new directory")
    e.add_argument("--general", nargs="*", default=[], help="experts (names or tasks) written as general_<name>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        from mmpt.library.store import Library
        if args.command == "build":
            from mmpt.library.extract import build
            out = build(args.out, args.sources)
            print(f"wrote {len(Library(out).names)} experts to {out}")
        elif args.command == "show":
            print(table(Library(args.library)))
        else:
            return {"cluster": run_cluster, "gates": run_gates, "export": run_export}[args.command](Library(args.library), args)
    except MMPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
