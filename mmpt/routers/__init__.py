from mmpt.routers.input_router import InputRouter, Routing, route_stats, router_options  # noqa: F401
from mmpt.routers.skills import SELECTORS, build_selector  # noqa: F401  task-to-skill selectors (MTTL)
