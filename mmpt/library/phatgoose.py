"""PhatGOOSE routing (Muqeeth et al. 2024; mttl's PhatgooseSelector): `finetune_type=phatgoose`.

Each expert has a gate vector v_e per adapted layer, trained after the fact by
`python -m mmpt.library gates LIB` (gates.py) and kept in the library's cache (GATES). Per token
and layer: logits_e = LN(x) . LN(v_e) / tau, LN a LayerNorm without affine terms (mttl's `norm_d`
on both sides), tau = sqrt(d_in) (mttl's router_temp=-1) or router_temp when > 0; the top_k experts
are kept and their weights are a softmax over the kept logits. The library type and its options:
mmpt/library/types/phatgoose.py.
"""
import math

import torch.nn.functional as F

from mmpt.library.methods import Arrow, RoutedLinear
from mmpt.library.store import LibraryError

GATES = "phatgoose_gates"  # the cache entry: {module: [E, d_in]}, experts in index order


class PhatgooseLinear(RoutedLinear):
    """The keys are the experts' gate vectors."""

    def __init__(self, base, A, B, gates, top_k: int, router_temp: float):
        super().__init__(base, A, B, gates, top_k)
        self.router_temp = router_temp

    def logits(self, x):
        d = x.shape[-1]
        tau = self.router_temp if self.router_temp > 0 else math.sqrt(d)
        xn = F.layer_norm(x.float(), (d,))  # routing in fp32, as mttl does
        vn = F.layer_norm(self.keys.float(), (d,))
        return (xn @ vn.T / tau).to(x.dtype)


class Phatgoose(Arrow):
    title = "PhatGOOSE"

    def make_layer(self, name, linear):
        A, B = self._stack[name]
        return PhatgooseLinear(linear, A, B, self._protos[name], self.cfg.top_k, self.cfg.router_temp)


def trained_gates(lib) -> dict:
    gates = lib.stored(GATES)
    if gates is None:
        raise LibraryError(f"library {lib.path} has no PhatGOOSE gates; train them first: "
                           f"python -m mmpt.library gates {lib.path}")
    return gates
