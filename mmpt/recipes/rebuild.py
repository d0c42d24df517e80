"""A finished finetune.py run's model, rebuilt as its recipe built it, with its best weights (for
tools that score runs: python -m mmpt.evaluate).

A fine-tuned train.py run (`pretrained=`) is rebuilt by transfer.prepare_model (the pretrained
run's best weights, the new task's routing), a library run (`library=`) by
library.prepare_library_model; then the run's own checkpoints/best is loaded over it. A library
type that trains nothing (arrow, uniform, the merges on text-to-text backbones) writes no
checkpoint: the model as built is the run's model.
"""
from pathlib import Path

from omegaconf import OmegaConf
from transformers import set_seed

from mmpt.data import get_task
from mmpt.engine import checkpoint
from mmpt.errors import CheckpointError
from mmpt.library.store import Library
from mmpt.recipes.library import prepare_library_model
from mmpt.recipes.transfer import prepare_model
from mmpt.runs import FinishedRun, open_run


def is_finetune_run(cfg) -> bool:
    return "finetune_type" in cfg


def backbone_config(cfg):
    """The backbone config of a run's config: a train.py run's own, a fine-tuned run's pretrained
    run's, a library run's library's (finetune.py configs have no model)."""
    if not is_finetune_run(cfg):
        return cfg.model
    if cfg.get("library"):
        return OmegaConf.create(Library(cfg.library).index["model"])
    return open_run(cfg.pretrained, "fine-tuning", key="pretrained").cfg.model


def load_finetuned(path, cfg):
    """(model in eval mode, the run's task id, FinishedRun) of the finished finetune.py run at
    `path` whose config is `cfg`; FinishedRun.best is None where the run trained nothing."""
    path = Path(path)
    set_seed(cfg.seed)  # as finetune() seeds before building: what no checkpoint holds is the run's init
    task = get_task(cfg.dataset.name)
    if cfg.get("library"):
        model, groups = prepare_library_model(Library(cfg.library), cfg.finetune_type,
                                              cfg.get("experts") or {}, task)
        task_id = 0
    else:
        pre = open_run(cfg.pretrained, "fine-tuning", key="pretrained")
        model, task_id, groups = prepare_model(pre, cfg.finetune_type, task)
    # a type that trains nothing writes no checkpoint (library.finetune's evaluate_only)
    best = checkpoint.find(path / "checkpoints" / "best") if groups else None
    if groups and best is None:
        raise CheckpointError(f"{path}: no complete checkpoints/best (did the finetune.py run finish "
                              "its first evaluation?)")
    meta = checkpoint.load_weights(best, model) if best else {}
    return model.eval(), task_id, FinishedRun(path, cfg, best, meta)
