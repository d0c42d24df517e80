"""Prompt and prefix experts: libraries of soft prompts / deep prefixes, and the methods that reuse them.

Extraction (registered in extract.EXTRACTORS): a `prompt_tuning` or `prefix` run gives one expert
per task: with `method.per_task: true` each task (or template) of its mixture is one, named after
it; a single-task run gives one, named after its task. The expert's file holds `prompt` [P, d] or
`prefix` [P, sites * 2 * H * d_head]; every expert of a library must share the kind, backbone,
length (and, for prefixes, placement), which `build` checks in one line.

Reuse (the library types in types/prompt.py):
- RoutedPrompts: SMoP over the library's prompts, which stay frozen. The input router
  (mmpt/routers/input_router.py) gives p over the E experts; sum_topk p_e * prompt_e is prepended.
  Only the router trains.
- RoutedPrefixes: the MMPT router and adaptive masks (PrefixRouting, share_type none) over the
  frozen prefixes as its routed pool: routes = experts, m = the prefix length. Router and masks train.
- FixedPrompt / FixedPrefix: one frozen prompt / prefix, e.g. the experts' mean (`uniform`).
"""
import json

import torch
from omegaconf import OmegaConf

from mmpt.data import get_task
from mmpt.data.mixture import task_keys
from mmpt.library.experts import EXTRACTORS, backbone_of, run_info
from mmpt.library.store import Expert, LibraryError
from mmpt.methods.base import Method
from mmpt.methods.prefix_attention import table_to_state
from mmpt.methods.prefix_routing import PrefixRouting
from mmpt.methods.prompt_tuning import prepend
from mmpt.routers.input_router import InputRouter, route_stats

KINDS = {"prompt": "prompt", "prefix": "prefix"}  # library kind -> the tensor each expert file holds


def _experts(cfg, model, run, kind: str, table: torch.Tensor, compat: dict) -> list:
    """One Expert per row of a per-task table [T, P, w], or the run's one [P, w]."""
    per_task = getattr(model.method, "per_task", None)
    rows = table if per_task else table[None]
    names = task_keys(cfg.dataset) if cfg.dataset.get("tasks") else [cfg.dataset.name]
    if len(names) != len(rows):
        raise LibraryError(f"{run}: {len(rows)} per-task rows but the run's dataset has {len(names)} tasks")
    info, metrics = run_info(run), {}
    if per_task and (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    experts = []
    for name, row in zip(names, rows):
        own = dict(info)
        task = name.split("/")[0]  # "task/template" keys: the template's task
        key = f"val/{name}/{get_task(task).main_metric}"
        if key in metrics:  # a per-task run: the task's own score, not the mixture's average
            own.update(val_metric=key, val_score=metrics[key])
        experts.append(Expert(name, cfg.method.name, {KINDS[kind]: row.detach().float()}, dict(compat),
                              {"task": task, "skill": None, **own}))
    return experts


def _compat(cfg, kind: str, table: torch.Tensor, **more) -> dict:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return {"kind": kind, "backbone": backbone_of(model_cfg), "length": table.shape[-2],
            "width": table.shape[-1], **more}


@EXTRACTORS.register("prompt_tuning")
def prompt_experts(cfg, model, run) -> list:
    table = model.method.prompt
    return _experts(cfg, model, run, "prompt", table, _compat(cfg, "prompt", table))


@EXTRACTORS.register("prefix")
def prefix_experts(cfg, model, run) -> list:
    table = model.method.prefix
    compat = _compat(cfg, "prefix", table, placement=model.method.cfg.placement)
    return _experts(cfg, model, run, "prefix", table, compat)


def stack(lib) -> torch.Tensor:
    """[E, P, w]: the library's prompts or prefixes in index order."""
    if lib.kind not in KINDS:
        raise LibraryError(f"library {lib.path} holds {lib.kind} experts; this needs prompt or prefix experts")
    return torch.stack([lib.tensors(n)[KINDS[lib.kind]] for n in lib.names])


def _check_width(lib, table: torch.Tensor, width: int) -> None:
    if table.shape[-1] != width:
        raise LibraryError(f"library {lib.path}: its {lib.kind}es are {table.shape[-1]} wide, this backbone "
                           f"needs {width}")


# -- prompts --
class FixedPrompt(Method):
    """A frozen prompt [P, d] prepended to every input (nothing trains)."""

    def __init__(self, cfg, backbone, info, lib, prompt):
        super().__init__(cfg, backbone, info)
        _check_width(lib, prompt, info["d_model"])
        self.register_buffer("prompt", prompt, persistent=False)

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        embeds, mask = prepend(embeds, batch["attention_mask"], self.prompt[None])
        return {"inputs_embeds": embeds, "attention_mask": mask}, {}

    def param_groups(self):
        return {}


class RoutedPrompts(Method):
    """SMoP's router over the library's frozen prompts: sum_topk p_e * prompt_e, per example."""

    def __init__(self, cfg, backbone, info, lib, experts, router_options: dict):
        super().__init__(cfg, backbone, info)
        _check_width(lib, experts, info["d_model"])
        self.expert_names = list(lib.names)
        self.register_buffer("experts", experts, persistent=False)  # [E, P, d]
        self.router = InputRouter(info["d_model"], len(experts), **router_options)

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        route = self.router(embeds, batch["attention_mask"])
        pool = self.experts.to(embeds.dtype)
        prompt = (route.weights[..., None, None].to(pool.dtype) * pool[route.index]).sum(1)  # [B, P, d]
        embeds, mask = prepend(embeds, batch["attention_mask"], prompt)
        return {"inputs_embeds": embeds, "attention_mask": mask}, route.aux()

    def param_groups(self):
        return {"router": list(self.router.parameters())}

    def eval_stats(self, aux):
        return named_loads(route_stats(aux, len(self.expert_names)), self.expert_names)


def named_loads(stats: dict, names: list) -> dict:
    """router/load_<i> -> experts/load/<name>: which experts the router picks, by name."""
    return {(f"experts/load/{names[int(k.rsplit('_', 1)[1])]}" if k.startswith("router/load_") else k): v
            for k, v in stats.items()}


# -- prefixes --
class FixedPrefix(Method):
    """A frozen prefix table [P, width] at the sites of the library's placement (nothing trains)."""

    def __init__(self, cfg, backbone, info, lib, table):
        super().__init__(cfg, backbone, info)
        self.sites = self.placement_sites(lib.compat["placement"])
        _check_width(lib, table, len(self.sites) * 2 * info["n_heads"] * info["d_head"])
        self.register_buffer("table", table, persistent=False)

    def prepare(self, batch, backbone):
        kw, aux = super().prepare(batch, backbone)
        kw["mmpt_prefix"] = table_to_state(self.table[None], self.sites, self.info["n_heads"], self.info["d_head"])
        return kw, aux

    def param_groups(self):
        return {}


class RoutedPrefixes(PrefixRouting):
    """MMPT's router and masks over the library's frozen prefixes: the routed pool (share_type
    none, m = P, R = E) is the experts, a buffer; `cfg` is a prefix_routing method config."""

    def __init__(self, cfg, backbone, info, router_cfg, lib, experts):
        super().__init__(cfg, backbone, info, router_cfg)
        _check_width(lib, experts, self.width)
        self.expert_names = list(lib.names)
        del self.pool  # the fresh pool PrefixRouting made: the experts take its place, frozen
        self.register_buffer("pool", experts.reshape(-1, self.width), persistent=False)

    def param_groups(self):
        groups = super().param_groups()
        return {"router": groups["router"], "mask": groups["mask"]}

    def eval_stats(self, aux):
        return named_loads(super().eval_stats(aux), self.expert_names)
