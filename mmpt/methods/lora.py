"""LoRA (Hu et al. 2021) on the Linear modules whose names match `method.target_modules`."""
from mmpt.errors import ConfigError
from mmpt.methods.adapters import LoRALinear, wrap_linears
from mmpt.methods.base import Method, positive


class LoRA(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        rank = positive(cfg, "rank")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError("method.dropout", f"expected a value in [0, 1), got {cfg.dropout}")
        layers = wrap_linears(backbone, cfg.target_modules,
                              lambda lin: LoRALinear(lin, rank, cfg.alpha, cfg.dropout))
        # Plain list: the layers live inside the backbone; registering them here too would
        # give every adapter weight two names in the state dict.
        self._layers = list(layers.values())

    def param_groups(self):
        return {"adapters": [p for m in self._layers for p in (m.lora_A, m.lora_B)]}
