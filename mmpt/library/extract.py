"""Experts out of finished train.py runs: `build` (python -m mmpt.library build).

Each run is opened by mmpt.runs (its config and best checkpoint) and handed to the extractor its
method registered in EXTRACTORS (mmpt/library/experts.py); the modules imported below register
today's extractors (lora, poly_lora, prompt_tuning, prefix).
"""
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mmpt.errors import CheckpointError
from mmpt.library import lora_experts, prompt_experts  # noqa: F401  (they register their extractors)
from mmpt.library.experts import EXTRACTORS, backbone_of
from mmpt.library.store import Expert, LibraryError, check_compatible, refuse_nonempty, write
from mmpt.runs import load_model, open_run


def find_runs(source) -> list:
    """A run dir itself, or every run dir (a `.hydra/config.yaml`) under a multirun dir."""
    path = Path(source)
    if (path / ".hydra" / "config.yaml").is_file():
        return [path]
    if not path.is_dir():
        raise LibraryError(f"source {path} does not exist")
    runs = sorted({c.parent.parent for c in path.rglob(".hydra/config.yaml")})
    if not runs:
        raise LibraryError(f"source {path}: no train.py run (no .hydra/config.yaml) in it or under it")
    return runs


def open_source(run: Path):
    """The run opened (mmpt.runs), refused in one line when its method gives no experts."""
    try:
        finished = open_run(run, "a library")
    except CheckpointError as e:
        raise LibraryError(str(e)) from None
    method = finished.cfg.method.name
    if method not in EXTRACTORS:
        raise LibraryError(f"{run}: method `{method}` gives no library experts (these do: {EXTRACTORS.names()})")
    return finished


def collect(sources) -> tuple:
    """(experts, model config) of every run under `sources`. Configs are checked first (a mixed
    backbone is refused before any model is loaded)."""
    runs = [open_source(r) for s in sources for r in find_runs(s)]
    # one stub expert per run: the backbone check names the odd run (task and folder) before any loading
    stubs = [Expert(r.cfg.dataset.name, r.cfg.method.name, {},
                    {"backbone": backbone_of(OmegaConf.to_container(r.cfg.model, resolve=True))},
                    {"task": r.cfg.dataset.name, "source": str(r.path.resolve())}) for r in runs]
    check_compatible(stubs)
    experts = []
    for run in runs:
        model = load_model(run)
        with torch.no_grad():
            experts += EXTRACTORS[run.cfg.method.name](run.cfg, model, run.path)
    model_cfg = OmegaConf.to_container(runs[0].cfg.model, resolve=True)
    return experts, model_cfg


def build(out, sources) -> Path:
    """Write the library of every expert in `sources` (run or multirun dirs) to `out`."""
    refuse_nonempty(Path(out))  # before loading anything
    experts, model_cfg = collect(sources)
    return write(out, experts, model_cfg)
