"""One prompt / prefix per task (`method.per_task: true`) in mixed-task batches.

Every batch carries each example's task id (`task_id`: the mixture's task, or template, index;
0 on a single task). A per-task method stores its rows stacked, [n_tasks, ...], and gives each
example the row of its own task by indexing with those ids: one backbone call for the whole
mixed batch, and a task absent from the batch gets no gradient. The backbone wrappers need no
change: prompts are per-example input embeddings, prefixes per-example keys/values.
"""
import torch

from mmpt.errors import ConfigError

def per_task_rows(cfg, info) -> int | None:
    """The number of task rows for `method.per_task: true` (the data's task ids), else None."""
    per_task = cfg.get("per_task", False)  # configs written before the key existed: shared
    if not isinstance(per_task, bool):
        raise ConfigError("method.per_task", f"expected true or false, got {per_task!r}")
    return info.get("n_tasks", 1) if per_task else None


def select_rows(table: torch.Tensor, batch) -> torch.Tensor:
    """[B, ...]: row task_id[i] of `table` [n_tasks, ...] for every example i."""
    ids = batch["task_id"].to(table.device)
    if ids.numel() and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"task ids {ids.unique().tolist()} outside the {table.shape[0]} per-task rows")
    return table[ids]


def new_task_id(method) -> int:
    """finetune.py pretrained=<run> gives a held-out task the id this returns (`add_task`): 0 for a
    shared prompt / prefix, which every id reads. Per-task rows have none for a new task, and
    taking task 0's would be silent: refused, pointing to the library."""
    if method.per_task:
        raise ConfigError("pretrained", f"this {method.cfg.name} run has one row per task (method.per_task=true) "
                          "and none for a new task: build a library of them (python -m mmpt.library build) "
                          "and fine-tune with library=<dir> finetune_type=routed or uniform")
    return 0
