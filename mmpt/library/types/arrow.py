"""finetune_type=arrow: Arrow routing over a library of LoRA experts (Ostapenko et al. 2024), with
GenKnowSub first when `experts.general` names general experts (gks.py). Nothing trains."""
import logging
from dataclasses import dataclass

from mmpt.library import gks
from mmpt.library.methods import Arrow, prototypes
from mmpt.library.registry import LIBRARY_TYPES, method_cfg, option

log = logging.getLogger(__name__)


@dataclass
class ArrowOptions:
    """experts.* of conf/finetune_type/arrow.yaml (defaults and comments there)."""
    top_k: int
    temperature: float
    general: list


@LIBRARY_TYPES.register(("lora", "arrow"), config=ArrowOptions, trains=())
def arrow(lib, opts, backbone, info):
    """Arrow over the library; with `experts.general` (GenKnowSub, gks.py) over the task experts
    minus the general experts' mean A and B."""
    general = gks.check(lib, "arrow", opts["general"])
    names, stack = gks.subtract(lib.lora_stack(), lib.names, general)
    n = len(names)
    top_k = option(opts, "top_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    temperature = option(opts, "temperature", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0")
    if top_k > n:
        log.warning("experts.top_k=%d but the library has %d experts: every expert is used", top_k, n)
    key = "arrow_prototypes" + "".join(f"_gks_{g}" for g in sorted(general))
    protos = lib.cached(key, lambda: prototypes(stack))
    cfg = method_cfg("arrow", top_k=min(top_k, n), temperature=float(temperature), general=general)
    return Arrow(cfg, backbone, info, lib, stack, protos, names)
