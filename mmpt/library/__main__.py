"""python -m mmpt.library build --out DIR SOURCES... | show DIR

build: the experts of finished train.py runs (a run dir, or a multirun dir: every run under it;
lora runs give one expert per run, named after its task; a poly_lora run one per skill) into a
new library directory. Experts of different backbones, targets or ranks are refused with one line.
show: the library's index as a table.
"""
import argparse
import logging
import sys

from mmpt.errors import MMPTError
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmpt.library", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="collect the experts of finished runs into a new library")
    b.add_argument("--out", required=True, help="a new directory")
    b.add_argument("sources", nargs="+", help="train.py run dirs or multirun dirs")
    s = sub.add_parser("show", help="print a library's index")
    s.add_argument("library")
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
        else:
            print(table(Library(args.library)))
    except MMPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
