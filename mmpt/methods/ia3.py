"""(IA)^3 (Liu et al. 2022): learned scales on the outputs of the Linear modules matching
`method.target_modules` (by default keys, values and the FFN's inner projection, as in T-Few)."""
from mmpt.export.mapping import PeftMapping, Slot
from mmpt.methods.adapters import IA3Linear, transposed, wrap_linears
from mmpt.methods.base import Method


class IA3(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        # Plain dict and list: the layers live inside the backbone (one name per weight in the state dict).
        self._named = wrap_linears(backbone, cfg.target_modules, IA3Linear)
        self._layers = list(self._named.values())

    def param_groups(self):
        return {"adapters": [m.ia3_l for m in self._layers]}

    def peft_mapping(self):
        # mmpt scales every target's output. PEFT does that for targets that are not in
        # feedforward_modules (those it scales at the input), with ia3_l of shape [d_out, 1].
        config = {"peft_type": "IA3", "target_modules": sorted(self._named), "feedforward_modules": [],
                  "fan_in_fan_out": transposed(self._layers)}
        return PeftMapping(config, {f"{name}.ia3_l": Slot(m.ia3_l, (m.ia3_l.numel(), 1))
                                    for name, m in self._named.items()})
