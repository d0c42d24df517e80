"""The router registry: `router.name` -> a router class and its config (conf/router/<name>.yaml).

Two kinds live here (`extra["kind"]`): `input` routers (input-conditioned, used by prefix_routing
and prompt_routing) and `skills` selectors (task-to-skill weights, used by poly_lora / poly_ia3).
"""
from dataclasses import dataclass

from mmpt.registry import Registry

ROUTERS = Registry("router", key="router.name", group="router")  # defaults: conf/router/<name>.yaml


@dataclass
class NoRouterConfig:
    """Option names and types; defaults and comments: conf/router/none.yaml."""
    name: str


ROUTERS.register("none", config=NoRouterConfig, kind="none")(None)  # methods that route nothing
