"""Figures of a run, drawn from the data its method returns (`Method.figures()`): methods never draw.

Kinds:
- heatmap: `values` [rows, columns]; `rows` the row labels, or "task_ids" (named from the run's
  config, report/heatmap.task_names); optional `labels` (columns, xlabel, ylabel, title, label).
- mask_gates: `gates` [routes or 1, tokens, sites] in [0, 1], `sites` their names, `per_route`.
Each spec names its `file` in the run dir; an optional `json` ({"file", "data"}) is written beside.
"""
import json
from pathlib import Path

from mmpt.report.heatmap import routing_heatmap, task_names


def mask_gates(gates, sites: list, per_route: bool, path: Path) -> Path:
    """sigmoid(M) per route: one panel per route, site x prefix token."""
    from matplotlib.figure import Figure  # object API: renders with Agg, no pyplot state

    rows, n_tokens = gates.shape[0], gates.shape[1]
    size = (2 + 0.35 * n_tokens * rows, 1.5 + 0.25 * len(sites))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, rows, squeeze=False)[0]
    for r, ax in enumerate(axes):
        image = ax.imshow(gates[r].T, vmin=0, vmax=1, aspect="auto", cmap="viridis")
        ax.set_title(f"route {r}" if per_route else "shared mask", fontsize=8)
        ax.set_xlabel("prefix token", fontsize=7)
        ax.set_yticks(range(len(sites)), sites if r == 0 else [], fontsize=6)
    fig.colorbar(image, ax=list(axes), label="sigmoid(M)")
    fig.savefig(path, dpi=100)
    return path


def draw(figures: dict, run_dir) -> dict:
    """{key: path of the image written} for every figure spec (see the module docstring)."""
    run_dir, out = Path(run_dir), {}
    for key, spec in figures.items():
        path = run_dir / spec["file"]
        if spec["kind"] == "heatmap":
            rows = spec["rows"]
            if rows == "task_ids":
                rows = task_names(run_dir, len(spec["values"]))
            out[key] = str(routing_heatmap(spec["values"], rows, path, **spec.get("labels", {})))
        elif spec["kind"] == "mask_gates":
            out[key] = str(mask_gates(spec["gates"], spec["sites"], spec["per_route"], path))
        else:
            raise ValueError(f"figure {key}: unknown kind {spec['kind']!r}")
        if "json" in spec:
            (run_dir / spec["json"]["file"]).write_text(json.dumps(spec["json"]["data"]))
    return out
