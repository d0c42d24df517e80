"""Methods: `method.name` in the config -> a class registered in METHODS (mmpt/methods/base.py).

Each method module registers its class with its config dataclass; every module of this package is
imported below, which completes the registry. A new method is one new module here (registered the
same way) plus one YAML in conf/method/: no list of names to edit.
"""
import importlib
import pkgutil

from mmpt.errors import ConfigError
from mmpt.methods.base import GROUP_NAMES, METHODS, Method

# Import every module of this package: each registers what it defines, so a new method is a new
# file here. Sorted by file name, so the registry's order (listings, error messages) never varies.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

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
