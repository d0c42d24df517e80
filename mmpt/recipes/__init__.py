"""Recipes: each builds what one kind of run needs and hands it to the engine (mmpt/engine).

    train.py       train(cfg): one method on one task or a mixture
    transfer.py    MTTL transfer of a train.py run to a held-out task (pretrained=; FINETUNE_TYPES)
    library.py     a library's experts on a held-out task (library=; mmpt/library/types.py)
    common.py      what they share: data, the one place that decides what trains, fit + final evaluation

train.py and finetune.py at the repository root are thin @hydra.main wrappers around `train` and
`finetune`.
"""
from mmpt.recipes import library, transfer
from mmpt.recipes.train import train

__all__ = ["train", "finetune"]


def finetune(cfg, on_eval=None) -> dict:
    """finetune.py: a library's experts (library=DIR) or a train.py run's skills (pretrained=RUN)."""
    recipe = library if cfg.get("library") else transfer
    return recipe.finetune(cfg, on_eval=on_eval)
