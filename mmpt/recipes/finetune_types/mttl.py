"""The MTTL reference's fine-tuning types (Polytropon transfer), each with its conf/finetune_type/<name>.yaml."""
from mmpt.recipes.finetune_types.spec import FINETUNE_TYPES, FinetuneType

# the reference's F trains the whole model of any checkpoint
FINETUNE_TYPES.register("F")(FinetuneType(True, "new_row", None))
FINETUNE_TYPES.register("A")(FinetuneType(True, "new_row", ("adapters",), plain_adapters=True))
FINETUNE_TYPES.register("Z")(FinetuneType(True, "new_row", ("routing",)))
FINETUNE_TYPES.register("MuZ")(FinetuneType(True, "average", ("adapters",)))
FINETUNE_TYPES.register("PolyRand")(FinetuneType(False, "fresh", ("adapters", "routing")))
FINETUNE_TYPES.register("Poly")(FinetuneType(True, "new_row", ("adapters", "routing")))
