"""finetune_type=phatgoose: PhatGOOSE routing (mmpt/library/phatgoose.py) over the gates trained by
`python -m mmpt.library gates LIB`; nothing trains. Its options are the block experts.phatgoose
(conf/finetune_type/phatgoose.yaml: mttl's PhatgooseSelectorConfig defaults)."""
from dataclasses import dataclass

from mmpt.library.phatgoose import Phatgoose, trained_gates
from mmpt.library.registry import LIBRARY_TYPES, method_cfg, option


@dataclass
class PhatgooseOptions:
    """experts.phatgoose."""
    top_k: int
    router_temp: float


@dataclass
class PhatgooseTypeOptions:
    """What finetune_type=phatgoose reads: its own block, experts.phatgoose."""
    phatgoose: PhatgooseOptions


def phatgoose_options(lib, opts) -> tuple:
    """(top_k, router_temp), checked; refused when the library has no gates yet."""
    o = opts["phatgoose"]
    top_k = option(o, "top_k", lambda v: isinstance(v, int) and 1 <= v, "an integer >= 1", "experts.phatgoose")
    temp = option(o, "router_temp", lambda v: isinstance(v, (int, float)), "a number", "experts.phatgoose")
    trained_gates(lib)
    return top_k, temp


@LIBRARY_TYPES.register(("lora", "phatgoose"), config=PhatgooseTypeOptions, trains=(), check=phatgoose_options)
def phatgoose(lib, opts, backbone, info):
    top_k, temp = phatgoose_options(lib, opts)
    n = len(lib.names)
    cfg = method_cfg("phatgoose", top_k=min(top_k, n), router_temp=float(temp))
    return Phatgoose(cfg, backbone, info, lib, lib.lora_stack(), trained_gates(lib))
