"""Library types: how `finetune.py library=DIR finetune_type=T` reuses a library's experts.

A type is a setup function `(library, opts, backbone, info) -> Method` registered in LIBRARY_TYPES
under (kind of the library's experts, finetune_type), with its options dataclass (`config`: the
names and types of the `experts.*` keys it reads; `opts` holds exactly those, read by
registry.own_options) and `trains`: the parameter groups that learn, or a function of the built
method giving them. Optional `check(lib, opts)` refuses bad options before the run dir is made.
Encoder backbones always train a new head for the task (mmpt/recipes/library.py); a type that
trains nothing on a text-to-text backbone is evaluated as it is (zero-shot).

A new type is a module in this package (found by the scan below: no list to edit) and its
conf/finetune_type/<name>.yaml (`# @package _global_`, `finetune_type: <name>` and its `experts`
options with their defaults and comments):

    @dataclass
    class MyOptions:
        density: float

    @LIBRARY_TYPES.register(("lora", "my_merge"), config=MyOptions, trains=())
    def my_merge(lib, opts, backbone, info): ...

Today's: arrow.py (Arrow, GenKnowSub), phatgoose.py, merges.py (PEFT's five merges), lora.py
(uniform, weighted, library_poly), prompt.py (routed and uniform over prompt / prefix experts).
"""
from mmpt.library.registry import LIBRARY_TYPES, setup_of, types_of
from mmpt.registry import import_room

MODULES = import_room(__name__, __path__)

__all__ = ["LIBRARY_TYPES", "MODULES", "setup_of", "types_of"]
