"""A finished run's model, ready to be scored: its best weights as the run built them, or (--base)
its backbone with no adapter; the task id whose routing it uses."""
from transformers import set_seed

from mmpt.data.mixture import task_keys
from mmpt.errors import MMPTError
from mmpt.methods.base import Method
from mmpt.models import build_model
from mmpt.runs import load_model, open_run


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


def open_model(path, task_id: str | None = None, base: bool = False):
    """(model in eval mode, its task id, the run) of the finished run at `path`."""
    run = open_run(path, "mmpt.evaluate")
    model = load_model(run)
    if not model.family.can_generate or model.family.has_heads:
        raise MMPTError(f"{path} is an encoder run ({model.family.name}: a classification head, no "
                        "language-model head); lm-eval scores language models: t5 or causal LM runs only")
    index = choose_task(model, run.cfg, task_id, path)
    if base:
        set_seed(run.cfg.seed)
        model = build_model(run.cfg.model, run.cfg.method, make_method=lambda backbone, info: NoAdapter(
            run.cfg.method, backbone, info)).eval()
    return model, index, run
