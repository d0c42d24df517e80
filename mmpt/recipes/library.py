"""Library transfer: `finetune.py library=DIR finetune_type=T`, a library's experts on a held-out task.

The library type (mmpt/library/types/) builds the method over the library's frozen experts on a
fresh backbone and names what learns; encoder backbones also train the new task's head. A type
that trains nothing on a text-to-text backbone is evaluated as it is (zero-shot: no training loop).
"""
import logging

from omegaconf import OmegaConf, open_dict

from mmpt.context import RunContext
from mmpt.data import get_task
from mmpt import distributed
from mmpt.engine.meta import RunMeta
from mmpt.errors import ConfigError
from mmpt.library import gks
from mmpt.library.store import Library
from mmpt.library.registry import own_options
from mmpt.library.types import setup_of
from mmpt.methods.base import GROUP_NAMES
from mmpt.models import backbone_name, build_model
from mmpt.recipes.common import chosen_groups, evaluate_only, fit_and_test, load_task
from mmpt.recipes.start import begin

log = logging.getLogger(__name__)


def prepare_library_model(lib, ftype: str, experts, task):
    """(model, {group: parameters trained}) of a library finetune_type for `task` (task id 0);
    `experts`: the run's experts block, of which the type reads its own options only."""
    entry = setup_of(lib.kind, ftype)
    opts = own_options(entry.config, experts)
    model = build_model(OmegaConf.create(lib.index["model"]), None, None, n_tasks=1, tasks=[task],
                        make_method=lambda backbone, info: entry.obj(lib, opts, backbone, info))
    head = list(model.heads.parameters()) if model.family.has_heads else []  # the new task's head
    trains = entry.extra["trains"]
    trains = trains(model.method) if callable(trains) else tuple(trains)
    if not trains and not head:
        return model, {}
    return model, chosen_groups(model, trains, head)


def finetune(cfg, ctx: RunContext = RunContext()) -> dict:
    run = begin(cfg, ctx)  # the trainer, optimizer and seed checks every recipe makes first
    if cfg.get("pretrained"):
        raise ConfigError("library", "set pretrained= (a train.py run) or library= (a library), not both")
    lib, ftype = Library(cfg.library), cfg.get("finetune_type")
    entry = setup_of(lib.kind, ftype)  # before the run dir is made, as are the option checks below
    gks.check(lib, ftype, (cfg.get("experts") or {}).get("general"))
    if "check" in entry.extra:
        entry.extra["check"](lib, own_options(entry.config, cfg.get("experts")))
    with open_dict(cfg):
        if cfg.dataset.get("format") is None:  # the experts' runs: fixed formats
            cfg.dataset.format = "fixed"
    run.enter()
    model, groups = prepare_library_model(lib, ftype, cfg.get("experts") or {}, get_task(cfg.dataset.name))
    data = load_task(cfg, model.tokenizer, 0)
    model.to(distributed.device())
    log.info("library %s (%d %s experts) on %s: %s", lib.path, len(lib.names), lib.kind, cfg.dataset.name, ftype)
    meta = RunMeta(f"library_{ftype}", backbone_name(lib.index["model"]), cfg.dataset.name, cfg.seed,
                   label=f"finetune_{ftype}")
    if not groups:
        return evaluate_only(run, model, data, meta)
    return fit_and_test(run, model, data, groups, meta, configurable=GROUP_NAMES)
