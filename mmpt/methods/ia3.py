"""(IA)^3 (Liu et al. 2022): learned scales on the outputs of the Linear modules matching
`method.target_modules` (by default keys, values and the FFN's inner projection, as in T-Few)."""
from mmpt.methods.adapters import IA3Linear, wrap_linears
from mmpt.methods.base import Method


class IA3(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        # Plain list: the layers live inside the backbone (one name per weight in the state dict).
        self._layers = list(wrap_linears(backbone, cfg.target_modules, IA3Linear).values())

    def param_groups(self):
        return {"adapters": [m.ia3_l for m in self._layers]}
