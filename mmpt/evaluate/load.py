"""A finished run's model, ready to be scored: its best weights as the run built them, or (--base)
its backbone with no adapter; the task id whose routing it uses. train.py runs are rebuilt by
mmpt.runs, finetune.py runs (pretrained= or library=) by mmpt.recipes.rebuild."""
from pathlib import Path

from omegaconf import OmegaConf
from transformers import set_seed

from mmpt.data.mixture import task_keys
from mmpt.errors import MMPTError
from mmpt.methods.base import Method
from mmpt.models import build_model
from mmpt.recipes.rebuild import backbone_config, is_finetune_run, load_finetuned
from mmpt.runs import CONFIG, load_model, open_run


class NoAdapter(Method):
    """The backbone alone (--base: the forgetting baseline): no parameters, inputs as they are."""

    def param_groups(self) -> dict:
        return {}


def task_names(cfg) -> list[str]:
    """What the run's task ids index: its dataset's tasks (a mixture) or its one dataset."""
    return task_keys(cfg.dataset) if cfg.dataset.get("tasks") else [cfg.dataset.name]


def routed_by_task(model, cfg) -> bool:
    """Whether the method reads the task id (poly/MHR skills, per-task prompts or prefixes)."""
    return model.method.skill_routing or bool(cfg.method.get("per_task", False))


def choose_task(model, cfg, task_id: str | None, where) -> int:
    """The task id a run is scored with: a multi-task run routed by task needs --task-id NAME."""
    names = task_names(cfg)
    if task_id is not None:
        if task_id not in names:
            raise MMPTError(f"--task-id: {where} has no task {task_id!r}; its tasks: {', '.join(names)}")
        return names.index(task_id)
    if len(names) > 1 and routed_by_task(model, cfg):
        raise MMPTError(f"--task-id: {where} routes by task and was trained on {len(names)} tasks: "
                          f"name the one whose routing to use (--task-id NAME; one of {', '.join(names)})")
    return 0


def read_config(path):
    """A run folder's .hydra/config.yaml; open_run's one-line error where it is missing or unreadable."""
    try:
        return OmegaConf.load(Path(path) / CONFIG)
    except Exception:
        open_run(path, "mmpt.evaluate")  # raises its one-line error (no config, unreadable)
        raise


def finetuned_model(path, cfg, task_id: str | None):
    """A finetune.py run: one task, its own routing (the new row of a transfer run, a library's)."""
    if task_id is not None and task_id != cfg.dataset.name:
        raise MMPTError(f"--task-id: {path} is a finetune.py run of the one task {cfg.dataset.name!r}; "
                        f"got {task_id!r}")
    return load_finetuned(path, cfg)


def open_model(path, task_id: str | None = None, base: bool = False):
    """(model in eval mode, its task id, the run) of the finished run at `path`."""
    cfg = read_config(path)
    if is_finetune_run(cfg):
        model, index, run = finetuned_model(path, cfg, task_id)
    else:
        run = open_run(path, "mmpt.evaluate")
        model, index = load_model(run), None
    if not model.family.can_generate or model.family.has_heads:
        raise MMPTError(f"{path} is an encoder run ({model.family.name}: a classification head, no "
                        "language-model head); lm-eval scores language models: t5 or causal LM runs only")
    if index is None:
        index = choose_task(model, run.cfg, task_id, path)
    if base:
        set_seed(run.cfg.seed)
        method_cfg = OmegaConf.create({"name": "none"}) if is_finetune_run(cfg) else run.cfg.method
        model = build_model(backbone_config(cfg), method_cfg, make_method=lambda backbone, info: NoAdapter(
            method_cfg, backbone, info)).eval()
    return model, index, run
