"""MTTL transfer: the skills of a train.py run fine-tuned on a held-out task (python finetune.py pretrained=RUN).

The backbone, method and router are rebuilt from the pretrained run's config, its best weights are
loaded, the routing is adapted to the new task, and the groups the fine-tuning type names are
trained by the engine (the same loop, best-val selection and metrics.json as train.py). Before
fitting, the loaded skills are scored on test with average routing: `zero_shot/<metric>`. The
held-out task is read in the pretrained run's input format (`dataset.format`) unless the command
line sets one.

A fine-tuning type is a FinetuneType (what happens to the checkpoint, the routing and which groups
train) registered in FINETUNE_TYPES by a module of mmpt/recipes/finetune_types/, with its
conf/finetune_type/<name>.yaml.
"""
import logging

from omegaconf import open_dict

from mmpt.context import RunContext
from mmpt.data import get_task
from mmpt import distributed
from mmpt.engine import checkpoint
from mmpt.engine.evaluate import evaluate
from mmpt.engine.meta import RunMeta
from mmpt.errors import ConfigError
from mmpt.methods.base import GROUP_NAMES
from mmpt.models import backbone_name
from mmpt.recipes.common import chosen_groups, fit_and_test, load_task
from mmpt.recipes.finetune_types import FINETUNE_TYPES, FinetuneType
from mmpt.recipes.start import begin
from mmpt.runs import build_run_model, open_run

log = logging.getLogger(__name__)


def route_new_task(method, spec: FinetuneType, ftype: str) -> int:
    """Adapt the routing to the new task; return the task id its examples carry."""
    if spec.plain_adapters and method.skill_routing:
        # the reference refuses A on skill checkpoints too: the skills would train under a fresh
        # row's random routing samples while evaluation reads its (near uniform) sigmoid
        raise ConfigError("finetune_type", f"A would train the skills of this {method.cfg.name} checkpoint "
                          "under an untrained routing row (random in training, near uniform at eval); use "
                          "MuZ (skills under uniform routing), Poly (skills + a new row) or Z (the row only)")
    if callable(spec.routing):
        return spec.routing(method)
    if spec.routing == "new_row":
        return method.add_task()
    if not method.skill_routing:
        raise ConfigError("finetune_type", f"{ftype} needs a routed skills method (poly_lora, poly_ia3); "
                          f"the pretrained run used {method.cfg.name}")
    if spec.routing == "average":
        method.use_average()
    return 0  # fresh (PolyRand): a one-task table; average: the id is ignored


def inherit_format(cfg, pre) -> None:
    """dataset.format null (the default) -> the pretrained run's: skills pre-trained on promptsource
    templates are fine-tuned on templates too. The routing row is always one per task."""
    if cfg.dataset.get("format") is None:
        with open_dict(cfg):
            cfg.dataset.format = pre.dataset.get("format", "fixed")


def zero_shot(model, data, settings) -> dict:
    """Test metrics of the loaded skills with uniform routing, before any fitting (settings:
    EvaluationSettings)."""
    with model.method.averaged():
        metrics, _, _ = evaluate(model, data.loader("test"), data.test, data.task, settings)
    return {f"zero_shot/{k}": v for k, v in metrics.items()}


def prepare_model(run, ftype: str, new_task=None):
    """(model, the new task's id, {group: parameters trained}) for a fine-tuning type.

    Encoder backbones also get a fresh head for the new task, which trains in every type (a
    classifier for the new labels cannot come from the checkpoint); the old heads stay frozen.
    """
    spec = FINETUNE_TYPES.get(ftype).obj
    pre = run.cfg
    if spec.load:
        model = build_run_model(pre)
        checkpoint.load_weights(run.best, model)
    else:  # a one-task model of the same architecture
        model = build_run_model(pre, n_tasks=1, tasks=[new_task])
    task_id = route_new_task(model.method, spec, ftype)
    head = []
    if model.family.has_heads:
        head = model.add_head(new_task, task_id) if spec.load else list(model.heads.parameters())
    return model, task_id, chosen_groups(model, spec.trains, head)


def finetune(cfg, ctx: RunContext = RunContext()) -> dict:
    run = begin(cfg, ctx)
    FINETUNE_TYPES.get(cfg.get("finetune_type"))
    pre_run = open_run(cfg.pretrained, "fine-tuning", key="pretrained")
    pre = pre_run.cfg
    inherit_format(cfg, pre)
    run.enter()
    model, task_id, groups = prepare_model(pre_run, cfg.finetune_type, get_task(cfg.dataset.name))
    data = load_task(cfg, model.tokenizer, task_id)
    model.to(distributed.device())  # the zero-shot scoring runs before the engine has it
    log.info("fine-tuning %s (%s) on %s: %s, task id %d", cfg.pretrained, pre.method.name,
             cfg.dataset.name, cfg.finetune_type, task_id)
    extra = zero_shot(model, data, run.settings.evaluation)
    meta = RunMeta(pre.method.name, backbone_name(pre.model), cfg.dataset.name, cfg.seed,
                   label=f"finetune_{cfg.finetune_type}")
    # optimizer.groups may set any group's lr: a type uses those of the groups it trains
    return fit_and_test(run, model, data, groups, meta, extra=extra, configurable=GROUP_NAMES)
