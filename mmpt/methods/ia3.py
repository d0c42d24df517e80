"""(IA)^3 (Liu et al. 2022): learned scales on the outputs of the Linear modules matching
`method.target_modules` (by default keys, values and the FFN's inner projection, as in T-Few)."""
from dataclasses import dataclass

from mmpt.methods.adapters import IA3Linear, target_pattern, wrap_linears
from mmpt.methods.base import METHODS, Method


@dataclass
class IA3Config:
    """Option names and types; defaults and comments: conf/method/ia3.yaml."""
    name: str
    target_modules: str


@METHODS.register("ia3", config=IA3Config)
class IA3(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        # Plain dict and list: the layers live inside the backbone (one name per weight in the state dict).
        self._named = wrap_linears(backbone, target_pattern(cfg, info), IA3Linear)
        self._layers = list(self._named.values())

    @property
    def layers(self) -> dict:
        """{module path in the backbone: IA3Linear}."""
        return self._named

    def param_groups(self):
        return {"adapters": [m.ia3_l for m in self._layers]}
