"""Gain: a learned gain (1 + g) on each output unit of the Linear modules matching
`method.target_modules`. g starts at 0, so a fresh model computes exactly what its backbone does."""
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.methods.adapters import Wrapped, dims, target_pattern, wrap_linears
from mmpt.methods.base import METHODS, Method


class GainLinear(Wrapped):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.gain = nn.Parameter(torch.zeros(dims(base)[1]))

    def forward(self, x):
        y = self.base(x)
        return y * (1 + self.gain).to(y.dtype)


@dataclass
class GainConfig:
    name: str
    target_modules: str  # defaults in conf/method/gain.yaml


@METHODS.register("gain", config=GainConfig)
class Gain(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.layers = wrap_linears(backbone, target_pattern(cfg, info), GainLinear)  # a plain dict: they live in the backbone

    def param_groups(self):
        return {"adapters": [m.gain for m in self.layers.values()]}
