"""LoRA (Hu et al. 2021) on the Linear modules whose names match `method.target_modules`."""
from mmpt.errors import ConfigError
from mmpt.export.mapping import PeftMapping, Slot
from mmpt.methods.adapters import LoRALinear, transposed, wrap_linears
from mmpt.methods.base import Method, positive


class LoRA(Method):
    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        rank = positive(cfg, "rank")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError("method.dropout", f"expected a value in [0, 1), got {cfg.dropout}")
        self.rank = rank
        # Plain dict {module path: layer} and list: the layers live inside the backbone;
        # registering them here too would give every adapter weight two names in the state dict.
        self._named = wrap_linears(backbone, cfg.target_modules,
                                   lambda lin: LoRALinear(lin, rank, cfg.alpha, cfg.dropout))
        self._layers = list(self._named.values())

    def param_groups(self):
        return {"adapters": [p for m in self._layers for p in (m.lora_A, m.lora_B)]}

    def peft_mapping(self):
        # PEFT's LoRA: same A [r, d_in], B [d_out, r] and scale lora_alpha / r (use_rslora off), also
        # on GPT-2's Conv1D, where PEFT only needs to know that the base weight is stored [in, out]
        config = {"peft_type": "LORA", "r": self.rank, "lora_alpha": self.cfg.alpha,
                  "lora_dropout": self.cfg.dropout, "target_modules": sorted(self._named),
                  "fan_in_fan_out": transposed(self._layers)}
        return PeftMapping(config, {f"{name}.lora_{x}.weight": Slot(getattr(m, f"lora_{x}"))
                                    for name, m in self._named.items() for x in "AB"})
