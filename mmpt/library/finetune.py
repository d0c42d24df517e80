"""finetune.py library=DIR: reuse a library's experts on a held-out task.

FINETUNE_TYPES maps (kind of the library's experts, finetune_type) to a LibraryType:
`setup(library, opts, backbone, info)` returns the method wrapping a fresh backbone (opts: the
`experts` config block), and `trains` names the parameter groups that learn. Encoder backbones
always train a new head for the task; a type that trains nothing on a text-to-text backbone is
evaluated as it is (zero-shot: no training loop). Another type, or the same type for another kind
of expert, joins with `@library_type("name", trains=(...), kind="...")` in any module this one imports.
"""
import logging
import re
import time
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf, open_dict
from transformers import set_seed

from mmpt.data import get_task
from mmpt.engine import distributed
from mmpt.engine.logging import RunLogger
from mmpt.errors import ConfigError
from mmpt.experiment import final_eval, fit_and_test, run_dir
from mmpt.finetune import load_task, restrict, with_model
from mmpt.library.methods import Arrow, Merged, Weighted, prototypes, ties_merge, uniform_merge
from mmpt.library.store import Library
from mmpt.methods.base import GROUP_NAMES
from mmpt.methods.poly import PolyLoRA
from mmpt.models import build_model

log = logging.getLogger(__name__)


@dataclass
class LibraryType:
    setup: callable        # (Library, opts, backbone, info) -> Method
    trains: tuple = ()     # parameter groups that learn (an encoder's new head always does), or a
                           # function of the built method giving them (prompt_types.py: routed)


FINETUNE_TYPES = {}


def library_type(name: str, trains=(), kind: str = "lora"):
    def register(setup):
        FINETUNE_TYPES[(kind, name)] = LibraryType(setup, trains if callable(trains) else tuple(trains))
        return setup
    return register


def types_of(kind: str) -> list:
    return [name for k, name in FINETUNE_TYPES if k == kind]


def option(opts, key: str, ok, expected: str):
    value = opts.get(key)
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"experts.{key}", f"expected {expected}, got {value!r}")
    return value


def method_cfg(name: str, **keys):
    return OmegaConf.create({"name": f"library_{name}", **keys})


@library_type("arrow")
def arrow(lib, opts, backbone, info):
    n = len(lib.names)
    top_k = option(opts, "top_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    temperature = option(opts, "temperature", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0")
    if top_k > n:
        log.warning("experts.top_k=%d but the library has %d experts: every expert is used", top_k, n)
    stack = lib.lora_stack()
    protos = lib.cached("arrow_prototypes", lambda: prototypes(stack))
    cfg = method_cfg("arrow", top_k=min(top_k, n), temperature=float(temperature))
    return Arrow(cfg, backbone, info, lib, stack, protos)


@library_type("uniform")
def uniform(lib, opts, backbone, info):
    deltas = lib.cached("uniform", lambda: uniform_merge(lib.lora_stack()))
    return Merged(method_cfg("uniform"), backbone, info, lib, deltas)


@library_type("ties")
def ties(lib, opts, backbone, info):
    density = option(opts, "density", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]")
    sign = option(opts, "majority_sign", lambda v: v in ("total", "frequency"), "total or frequency")
    deltas = lib.cached(f"ties_d{density:g}_{sign}", lambda: ties_merge(lib.lora_stack(), float(density), sign))
    return Merged(method_cfg("ties", density=float(density), majority_sign=sign), backbone, info, lib, deltas)


@library_type("weighted", trains=("routing",))
def weighted(lib, opts, backbone, info):
    return Weighted(method_cfg("weighted"), backbone, info, lib, lib.lora_stack())


@library_type("library_poly", trains=("adapters", "routing"))
def library_poly(lib, opts, backbone, info):
    """PolyLoRA with the experts as its skill bank (one split) and a fresh Polytropon row for the
    new task: the skills start as the experts (B stored times alpha / r, so the bank's scale is 1)."""
    stack, rank = lib.lora_stack(), lib.compat["rank"]
    targets = "|".join(re.escape(m) for m in lib.compat["targets"])
    cfg = OmegaConf.create({"name": "poly_lora", "n_skills": len(lib.names), "n_splits": 1, "rank": rank,
                            "alpha": rank, "dropout": 0.0, "target_modules": targets})
    router = OmegaConf.create({"name": "poly", "granularity": opts.get("granularity", "finegrained"),
                               "temperature": 1.0, "straight_through": False, "dropout": 0.0,
                               "shared_skill": False})
    method = PolyLoRA(cfg, backbone, info, router)
    with torch.no_grad():
        for name, (A, B) in stack.items():
            layer = backbone.get_submodule(name)
            layer.lora_A[0].copy_(A.transpose(1, 2))  # [E, d_in, r]
            layer.lora_B[0].copy_(B.transpose(1, 2))  # [E, r, d_out]
    return method


def prepare_library_model(lib, ftype: str, opts, task):
    """(model, {group: parameters trained}) of a library finetune_type for `task` (task id 0)."""
    if (lib.kind, ftype) not in FINETUNE_TYPES:
        raise ConfigError("finetune_type", f"a library of {lib.kind} experts takes one of {types_of(lib.kind)}, "
                          f"got {ftype!r}")
    spec = FINETUNE_TYPES[(lib.kind, ftype)]
    model = build_model(OmegaConf.create(lib.index["model"]), None, None, n_tasks=1, tasks=[task],
                        make_method=lambda backbone, info: spec.setup(lib, opts, backbone, info))
    head = list(model.heads.parameters()) if hasattr(model, "heads") else []  # encoders: the new task's head
    trains = spec.trains(model.method) if callable(spec.trains) else spec.trains
    return model, restrict(model, trains, head)


def evaluate_only(cfg, model, data, out, logger) -> dict:
    """Nothing trains (a text-to-text backbone with arrow / uniform / ties): score val and test."""
    start = time.perf_counter()
    metrics = final_eval(model, data, cfg.trainer, out)
    logger.log("eval", {k: v for k, v in metrics.items() if k.startswith("val/")}, 0)
    metrics.update(best_step=0, trainable_params=0, train_time_s=0.0,
                   optimized_metric_key=f"val/{data.task.main_metric}",
                   total_time_s=round(time.perf_counter() - start, 2))
    for key, path in getattr(model.method, "save_figures", lambda d: {})(out).items():
        logger.image(key, path)
    logger.finish(metrics)
    return metrics


def finetune_library(cfg) -> dict:
    if cfg.get("pretrained"):
        raise ConfigError("library", "set pretrained= (a train.py run) or library= (a library), not both")
    lib, ftype = Library(cfg.library), cfg.get("finetune_type")
    if (lib.kind, ftype) not in FINETUNE_TYPES:  # before the run dir is made
        raise ConfigError("finetune_type", f"a library of {lib.kind} experts takes one of {types_of(lib.kind)}, "
                          f"got {ftype!r}")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        if cfg.dataset.get("format") is None:  # the experts' runs: fixed formats
            cfg.dataset.format = "fixed"
    set_seed(cfg.seed)
    model, chosen = prepare_library_model(lib, ftype, cfg.get("experts") or {}, get_task(cfg.dataset.name))
    data = load_task(cfg, model.tokenizer, 0)
    model.to(distributed.device())
    log.info("library %s (%d %s experts) on %s: %s", lib.path, len(lib.names), lib.kind, cfg.dataset.name, ftype)
    logger = RunLogger(out, with_model(cfg, lib.index["model"]))
    if not chosen:
        return evaluate_only(cfg, model, data, out, logger)
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.model, run_cfg.method = lib.index["model"], {"name": f"library_{ftype}"}
        groups = run_cfg.optimizer.get("groups") or {}
        run_cfg.optimizer.groups = {k: v for k, v in groups.items() if k in chosen or k not in GROUP_NAMES}
    return fit_and_test(run_cfg, model, data, out, logger)


# prompt and prefix experts: `routed`, and `uniform` for their kinds (registered on import)
from mmpt.library import prompt_types  # noqa: E402,F401
