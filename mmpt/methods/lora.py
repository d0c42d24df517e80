"""LoRA (Hu et al. 2021) on the Linear modules whose names match `method.target_modules`."""
from dataclasses import dataclass

from mmpt.errors import ConfigError
from mmpt.methods.adapters import LoRALinear, target_pattern, wrap_linears
from mmpt.methods.base import METHODS, Method, positive


@dataclass
class LoRAConfig:
    """Option names and types; defaults and comments: conf/method/lora.yaml."""
    name: str
    rank: int
    alpha: float
    dropout: float
    target_modules: str


@METHODS.register("lora", config=LoRAConfig)
class LoRA(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        rank = positive(cfg, "rank")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError("method.dropout", f"expected a value in [0, 1), got {cfg.dropout}")
        self.rank = rank
        # Plain dict {module path: layer} and list: the layers live inside the backbone;
        # registering them here too would give every adapter weight two names in the state dict.
        self._named = wrap_linears(backbone, target_pattern(cfg, info),
                                   lambda lin: LoRALinear(lin, rank, cfg.alpha, cfg.dropout))
        self._layers = list(self._named.values())

    @property
    def layers(self) -> dict:
        """{module path in the backbone: LoRALinear}."""
        return self._named

    def param_groups(self):
        return {"adapters": [p for m in self._layers for p in (m.lora_A, m.lora_B)]}
