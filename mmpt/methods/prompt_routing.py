"""SMoP (Choi et al. 2023): a pool of R short soft prompts, one (or k) chosen per input.

The input router (mmpt/routers/input_router.py) gives p over R = num_virtual_tokens_full /
num_virtual_tokens prompts of m tokens each; sum_topk p_r * E_r is prepended to the encoder input
embeddings and the attention mask is extended. Scaling by p_r is what gives the router its
gradient. No load-balancing loss (the SMoP code's default path adds none either).
"""
from dataclasses import dataclass

from torch import nn

from mmpt.errors import ConfigError
from mmpt.methods.base import METHODS, Method, positive
from mmpt.methods.prompt_tuning import init_tokens, prepend
from mmpt.routers.input_router import InputRouter, route_stats, router_options


@dataclass
class PromptRoutingConfig:
    """Option names and types; defaults and comments: conf/method/prompt_routing.yaml."""
    name: str
    num_virtual_tokens: int
    num_virtual_tokens_full: int
    init: str
    topk: int
    perturb_router: bool
    router_dropout: float
    gumbel: bool


@METHODS.register("prompt_routing", config=PromptRoutingConfig)
class PromptRouting(Method):
    uses_router = True

    def __init__(self, cfg, backbone, info, router_cfg):
        super().__init__(cfg, backbone, info)
        m, full = positive(cfg, "num_virtual_tokens"), positive(cfg, "num_virtual_tokens_full")
        if full % m:
            raise ConfigError("method.num_virtual_tokens_full", f"must be a multiple of "
                              f"method.num_virtual_tokens ({m}): prompts R = F / m, got F = {full}")
        self.m, self.n_routes = m, full // m
        if self.n_routes < 2:  # one prompt: the router could change nothing (use method=prompt_tuning)
            raise ConfigError("method.num_virtual_tokens_full", f"routing needs at least 2 prompts: F = "
                              f"{full} gives R = {self.n_routes}; for one prompt use method=prompt_tuning")
        options = router_options(cfg, self.n_routes, router_cfg)
        embedding = backbone.get_input_embeddings()
        self.prompts = nn.Parameter(init_tokens(full, embedding, cfg.get("init", "normal"),
                                                 info.get("tokenizer")))
        self.router = InputRouter(info["d_model"], self.n_routes, **options)

    def param_groups(self):
        return {"prompt": [self.prompts], "router": list(self.router.parameters())}

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        route = self.router(embeds, batch["attention_mask"])
        pool = self.prompts.view(self.n_routes, self.m, -1)
        prompt = (route.weights[..., None, None].to(pool.dtype) * pool[route.index]).sum(1)  # [B, m, d]
        embeds, mask = prepend(embeds, batch["attention_mask"], prompt)
        return {"inputs_embeds": embeds, "attention_mask": mask}, route.aux()

    def eval_stats(self, aux):
        return route_stats(aux, self.n_routes)
