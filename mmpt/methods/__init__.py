"""Method registry: `method.name` in the config -> class. A new method is one module + one YAML."""
from mmpt.errors import ConfigError
from mmpt.methods.full import Full
from mmpt.methods.ia3 import IA3
from mmpt.methods.lora import LoRA
from mmpt.methods.poly import PolyIA3, PolyLoRA
from mmpt.methods.prefix import Prefix
from mmpt.methods.prefix_routing import PrefixRouting
from mmpt.methods.prompt_routing import PromptRouting
from mmpt.methods.prompt_tuning import PromptTuning

METHODS = {"full": Full, "prompt_tuning": PromptTuning, "prefix": Prefix, "lora": LoRA,
           "prefix_routing": PrefixRouting, "prompt_routing": PromptRouting}
METHODS.update({"ia3": IA3, "poly_lora": PolyLoRA, "poly_ia3": PolyIA3})  # MTTL skills


def build_method(cfg, backbone, info, router_cfg=None):
    """Methods with `uses_router = True` get the `router` config group; others refuse one."""
    if cfg.name not in METHODS:
        raise ConfigError("method.name", f"expected one of {sorted(METHODS)}, got {cfg.name!r}")
    cls = METHODS[cfg.name]
    routed = router_cfg is not None and router_cfg.get("name", "none") != "none"
    if getattr(cls, "uses_router", False):
        if not routed:
            raise ConfigError("router", f"method {cfg.name} needs a router; choose one in conf/router/")
        return cls(cfg, backbone, info, router_cfg)
    if routed:
        raise ConfigError("router", f"method {cfg.name} uses no router; set router=none")
    return cls(cfg, backbone, info)
