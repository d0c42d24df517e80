"""routing_heatmap.png: task x skill allocation of a skills method, rows named by task (or
"task/template") as the run's config defines its task ids."""
from pathlib import Path

import yaml
from matplotlib.figure import Figure  # object API: renders with Agg, no pyplot state


def _config(run_dir: Path) -> dict | None:
    for d in (run_dir, run_dir.parent):  # mean_over_seeds runs write into <run>/seed_<s>/
        f = d / ".hydra" / "config.yaml"
        if f.exists():
            return yaml.safe_load(f.read_text())
    return None


def _ids(dcfg: dict) -> list[str]:
    from omegaconf import OmegaConf

    from mmpt.data.mixture import task_keys
    return task_keys(OmegaConf.create(dcfg)) if dcfg.get("tasks") else [dcfg["name"]]


def task_names(run_dir, n_rows: int) -> list[str]:
    """The name of each routing row: the mixture's task ids; a finetune.py run appends its
    held-out task to the pretrained run's. "task <i>" when the config cannot tell (no Hydra
    config beside the run, or a count that does not match)."""
    names = []
    cfg = _config(Path(run_dir))
    try:
        if cfg and cfg.get("pretrained"):
            pre = yaml.safe_load((Path(cfg["pretrained"]) / ".hydra" / "config.yaml").read_text())
            new = cfg["dataset"]["name"]
            names = _ids(pre["dataset"])  # MuZ keeps the pretrained rows (averaged)
            if n_rows == 1:  # PolyRand: a fresh one-row table
                names = [new]
            elif n_rows == len(names) + 1:  # a new row for the held-out task
                names = names + [new]
        elif cfg:
            names = _ids(cfg["dataset"])
    except Exception:  # unreadable or foreign configs: a heatmap is a diagnostic, never a failure
        names = []
    return names if len(names) == n_rows else [f"task {i}" for i in range(n_rows)]


def routing_heatmap(weights, rows: list[str], path, columns=None, xlabel="skill", ylabel=None,
                    title="task x skill allocation\n(mean over selectors and splits)", label="routing weight") -> Path:
    """weights: [tasks, skills] array of mean routing shares (or any rows x columns shares: the
    library's layers x experts, with their labels)."""
    n_tasks, n_skills = weights.shape
    columns = columns or [str(s) for s in range(n_skills)]
    small = 8 if n_tasks <= 30 else 5
    labels = 0.07 * max(0, max(map(len, rows)) - 12)  # room for long row names (module paths)
    fig = Figure(figsize=(2.5 + labels + 0.45 * n_skills, 1.2 + (0.25 if n_tasks <= 30 else 0.12) * n_tasks),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(n_skills), columns, fontsize=small, rotation=90 if max(map(len, columns)) > 3 else 0)
    ax.set_yticks(range(n_tasks), rows, fontsize=small)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or ("task / template" if any("/" in r for r in rows) else "task"))
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label=label)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
