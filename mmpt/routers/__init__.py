"""Routers shared by methods, registered in ROUTERS (mmpt/routers/base.py) by `router.name`:
the input-conditioned top-k router (MMPT, SMoP) and the task-to-skill selectors (MTTL)."""
from mmpt.routers import input_router, skills  # noqa: F401  (their classes register themselves)
from mmpt.routers.base import ROUTERS
from mmpt.routers.input_router import InputRouter, Routing, route_stats, router_options
from mmpt.routers.skills import build_selector

__all__ = ["ROUTERS", "InputRouter", "Routing", "route_stats", "router_options", "build_selector"]
