"""Recipes: each builds what one kind of run needs and hands it to the engine (mmpt/engine).

    train.py       train(cfg): one method on one task or a mixture
    transfer.py    MTTL transfer of a train.py run to a held-out task (pretrained=; FINETUNE_TYPES)
    library.py     a library's experts on a held-out task (library=; mmpt/library/types/)
    rebuild.py     a finished finetune.py run's model as its recipe built it (python -m mmpt.evaluate)
    start.py       how each starts a run: settings and seed checked, folder, seed, logger
    common.py      what they share: data, the one place that decides what trains, fit + final evaluation

train.py and finetune.py at the repository root are thin @hydra.main wrappers around `train` and
`finetune`.
"""
from mmpt.context import RunContext
from mmpt.errors import ConfigError
from mmpt.models import backbone_name
from mmpt.recipes import library, transfer
from mmpt.recipes.train import train

__all__ = ["train", "finetune"]


def finetune(cfg, ctx: RunContext = RunContext()) -> dict:
    """finetune.py: a library's experts (library=DIR) or a train.py run's skills (pretrained=RUN)."""
    if cfg.get("model") is not None:  # conf/finetune.yaml's `model: null` slot exists only to say so
        source = f"library={cfg.library} (its index.json)" if cfg.get("library") else \
            f"pretrained={cfg.get('pretrained')} (its .hydra/config.yaml)"
        raise ConfigError("model", f"finetune.py takes the backbone from {source}; drop model= (got "
                          f"{backbone_name(cfg.model)}; debug=fast sets it too)")
    recipe = library if cfg.get("library") else transfer
    return recipe.finetune(cfg, ctx)
