"""Full fine-tuning: every backbone weight trains (one group, `backbone`)."""
from dataclasses import dataclass

from mmpt.methods.base import METHODS, Method


@dataclass
class FullConfig:
    """Option names and types; defaults and comments: conf/method/full.yaml."""
    name: str


@METHODS.register("full", config=FullConfig)
class Full(Method):
    trains_backbone = True  # refused on quantized backbones (models/quantize.py)

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        # A plain list, not a submodule: the backbone is registered once, by the model wrapper.
        self._params = list(backbone.parameters())
        for p in self._params:
            p.requires_grad_(True)

    def param_groups(self):
        return {"backbone": self._params}
