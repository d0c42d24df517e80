"""Fine-tuning types of `finetune.py pretrained=RUN finetune_type=T` (MTTL transfer, recipes/transfer.py).

A type is a FinetuneType registered in FINETUNE_TYPES (spec.py): whether it loads the pretrained
checkpoint, how it routes the new task (a keyword or a function of the method) and which groups
train. A new type is a module in this package (found by the scan below: no list to edit) and its
conf/finetune_type/<name>.yaml (`# @package _global_` and `finetune_type: <name>`):

    FINETUNE_TYPES.register("MeanZ")(FinetuneType(load=True, routing=mean_row, trains=("routing",)))

Today's: mttl.py (F, A, Z, MuZ, PolyRand, Poly).
"""
from mmpt.recipes.finetune_types.spec import FINETUNE_TYPES, FinetuneType
from mmpt.registry import import_room

MODULES = import_room(__name__, __path__)

__all__ = ["FINETUNE_TYPES", "FinetuneType", "MODULES"]
