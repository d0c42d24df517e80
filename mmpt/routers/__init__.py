"""Routers shared by methods, registered in ROUTERS (mmpt/routers/base.py) by `router.name`:
the input-conditioned top-k router (MMPT, SMoP) and the task-to-skill selectors (MTTL).

A new router is one new module here (its class registered in ROUTERS) plus one YAML in conf/router/."""
import importlib
import pkgutil

from mmpt.routers.base import ROUTERS
from mmpt.routers.input_router import InputRouter, Routing, route_stats, router_options
from mmpt.routers.skills import build_selector

# Import every module of this package: each registers what it defines, so a new router is a new
# file here. Sorted by file name, so the registry's order (listings, error messages) never varies.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ROUTERS", "InputRouter", "Routing", "route_stats", "router_options", "build_selector"]
