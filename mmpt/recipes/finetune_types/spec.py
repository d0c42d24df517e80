"""What a fine-tuning type is (FinetuneType) and their registry (FINETUNE_TYPES)."""
from dataclasses import dataclass

from mmpt.registry import Registry


@dataclass(frozen=True)
class FinetuneType:
    load: bool                   # load the pretrained checkpoint (False: same architecture, fresh init)
    routing: object              # new_row (a fresh routing row) | average (uniform, MuZ) | fresh (one-task
                                 # table) | a function (method) -> the new task's id, for a type of its own
    trains: tuple | None         # the groups that learn; None = every group the model has
    plain_adapters: bool = False  # refused on skill checkpoints (their skills need routing)


FINETUNE_TYPES = Registry("fine-tuning type", key="finetune_type")
