"""The task registry: `TASKS[name]` -> Task (see mmpt/data/base.py for the interface)."""
from __future__ import annotations

from mmpt.data.base import Example, Task
from mmpt.data.glue import GLUE_TASKS
from mmpt.data.superglue import SUPERGLUE_TASKS
from mmpt.errors import ConfigError

TASKS: dict[str, Task] = {task.name: task for task in SUPERGLUE_TASKS + GLUE_TASKS}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError("dataset.name", f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "Example", "get_task"]
