"""Methods: `method.name` in the config -> a class registered in METHODS (mmpt/methods/base.py).

Each method module registers its class with its config dataclass; importing them here, at the top,
completes the registry. A new method is one module (registered the same way) plus one YAML in
conf/method/.
"""
from mmpt.errors import ConfigError
from mmpt.methods import full, ia3, lora, poly, prefix, prefix_routing, prompt_routing, prompt_tuning  # noqa: F401
from mmpt.methods.base import GROUP_NAMES, METHODS, Method

__all__ = ["METHODS", "GROUP_NAMES", "Method", "build_method"]


def build_method(cfg, backbone, info, router_cfg=None):
    """Methods with `uses_router = True` get the `router` config group; others refuse one."""
    cls = METHODS.get(cfg.name).obj
    routed = router_cfg is not None and router_cfg.get("name", "none") != "none"
    if cls.uses_router:
        if not routed:
            raise ConfigError("router", f"method {cfg.name} needs a router; choose one in conf/router/")
        return cls(cfg, backbone, info, router_cfg)
    if routed:
        raise ConfigError("router", f"method {cfg.name} uses no router; set router=none")
    return cls(cfg, backbone, info)
