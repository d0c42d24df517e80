"""A deterministic task-to-skill selector: the softmax of a learned (task, split, skill) table
over a temperature, the same in training and evaluation (no sampling noise)."""
from dataclasses import dataclass

from mmpt.routers.base import ROUTERS
from mmpt.routers.skills import Table


@dataclass
class SoftmaxTableConfig:
    name: str = "softmax_table"
    granularity: str = "coarsegrained"  # which adapted layers share a selector
    temperature: float = 1.0            # softmax temperature


@ROUTERS.register("softmax_table", config=SoftmaxTableConfig, kind="skills")
class SoftmaxTable(Table):
    def __init__(self, n_tasks, n_splits, n_skills, temperature=1.0):
        super().__init__(n_tasks, n_splits, n_skills)
        self.temperature = temperature

    def probs(self, task_ids, sample):
        return (self.table(task_ids) / self.temperature).softmax(-1)
