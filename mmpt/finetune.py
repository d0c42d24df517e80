"""finetune(cfg): transfer the skills of a train.py run to a held-out task (MTTL fine-tuning).

The backbone, method and router are rebuilt from the pretrained run's `.hydra/config.yaml`, its
`checkpoints/best` weights are loaded, the routing is adapted to the new task, and the parameters
`finetune_type` names are trained by experiment.fit_and_test (the same loop, best-val selection and
metrics.json as train.py). Before fitting, the loaded skills are scored on test with average
routing: `zero_shot/<metric>`. The held-out task is read in the pretrained run's input format
(`dataset.format`) unless the command line sets one.
"""
import logging
from contextlib import nullcontext
from pathlib import Path

from omegaconf import OmegaConf, open_dict
from transformers import set_seed

from mmpt.data import get_task, load_splits, resolve_data_dir
from mmpt.data.splits import kshot
from mmpt.data.mixture import MixtureData, apply_format, num_tasks
from mmpt.engine import checkpoint, distributed
from mmpt.engine.evaluate import evaluate
from mmpt.engine.logging import RunLogger
from mmpt.engine.loop import validate_trainer
from mmpt.errors import CheckpointError, ConfigError
from mmpt.experiment import TaskData, fit_and_test, head_tasks, run_dir
from mmpt.methods.base import GROUP_NAMES
from mmpt.models import build_model

log = logging.getLogger(__name__)

# finetune_type -> (load the checkpoint, what happens to the routing, the groups it trains;
# None = every group the model has, as the reference's F trains the whole model of any checkpoint)
TYPES = {
    "F": (True, "new_row", None),
    "A": (True, "new_row", ("adapters",)),
    "Z": (True, "new_row", ("routing",)),
    "MuZ": (True, "average", ("adapters",)),
    "PolyRand": (False, "fresh", ("adapters", "routing")),
    "Poly": (True, "new_row", ("adapters", "routing")),
}


def load_pretrained(path) -> tuple:
    """(config, best checkpoint dir) of a train.py run directory; clear errors when incomplete."""
    if not path:
        raise ConfigError("pretrained", "set pretrained=<run directory of a train.py run>")
    path = Path(path)
    config = path / ".hydra" / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"pretrained={path}: no {config.relative_to(path)}; expected the run "
                              "directory of a train.py run")
    best = checkpoint.find(path / "checkpoints" / "best")
    if best is None:
        raise CheckpointError(f"pretrained={path}: no complete checkpoints/best (did the run finish "
                              "its first evaluation?)")
    return OmegaConf.load(config), best


def route_new_task(method, how: str, ftype: str) -> int:
    """Adapt the routing to the new task; return the task id its examples carry."""
    if ftype == "A" and hasattr(method, "use_average"):
        # the reference refuses A on skill checkpoints too: the skills would train under a fresh
        # row's random routing samples while evaluation reads its (near uniform) sigmoid
        raise ConfigError("finetune_type", f"A would train the skills of this {method.cfg.name} checkpoint "
                          "under an untrained routing row (random in training, near uniform at eval); use "
                          "MuZ (skills under uniform routing), Poly (skills + a new row) or Z (the row only)")
    if how == "new_row":
        return method.add_task() if hasattr(method, "add_task") else 0
    if not hasattr(method, "use_average"):
        raise ConfigError("finetune_type", f"{ftype} needs a routed skills method (poly_lora, poly_ia3); "
                          f"the pretrained run used {method.cfg.name}")
    if how == "average":
        method.use_average()
    return 0  # fresh (PolyRand): a one-task table; average: the id is ignored


def restrict(model, names, head=()) -> dict:
    """Train exactly the named groups (plus `head`: an encoder's head for the new task): set
    requires_grad accordingly and make the model report just these groups to the optimizer.
    `backbone` = every backbone weight no method group owns; names None = every group."""
    groups = {k: v for k, v in model.method.param_groups().items() if v}
    owned = {id(p) for ps in groups.values() for p in ps}
    # a quantized backbone's integer weights cannot train: F trains its float ones (embeddings, norms, head)
    rest = [p for p in model.backbone.parameters() if id(p) not in owned and p.is_floating_point()]
    groups["backbone"] = groups.get("backbone", []) + rest
    names = sorted(groups) if names is None else names
    missing = [n for n in names if not groups.get(n)]
    if missing:
        raise ConfigError("finetune_type", f"this model has no `{missing[0]}` parameters to train "
                          f"(method {model.method.cfg.name}; it has {sorted(groups)})")
    chosen = {n: groups[n] for n in names}
    if head:
        chosen["head"] = list(head)
    model.requires_grad_(False)
    for params in chosen.values():
        for p in params:
            p.requires_grad_(True)
    # The fine-tuning type, not the method, decides what trains: the optimizer asks the model.
    model.param_groups = lambda: chosen
    return chosen


def load_task(cfg, tokenizer, task_id: int):
    """The held-out task's (k-shot) splits, its examples carrying `task_id`."""
    if cfg.dataset.get("tasks"):
        raise ConfigError("dataset", "fine-tuning takes one held-out task, not a mixture")
    name, data_dir = cfg.dataset.name, resolve_data_dir(cfg.paths.data_dir)
    splits = kshot(load_splits(name, data_dir, cfg.seed, cfg.dataset.get("val_fraction", 0.1)),
                   cfg.k_shot, cfg.seed)
    if (cfg.dataset.get("format") or "fixed") == "fixed":  # null: finetune() sets the pretrained run's
        return TaskData(get_task(name), splits, tokenizer, cfg.dataset, cfg.trainer, cfg.seed, task_id=task_id)
    if cfg.dataset.get("task_id_from", "task") != "task":
        raise ConfigError("dataset.task_id_from", "fine-tuning gives the new task one routing row: use `task`")
    splits = apply_format(name, splits, cfg.dataset, data_dir, cfg.seed)  # promptsource templates
    return MixtureData(cfg.dataset, {name: splits}, tokenizer, cfg.trainer, cfg.seed, task_offset=task_id)


def inherit_format(cfg, pre) -> None:
    """dataset.format null (the default) -> the pretrained run's: skills pre-trained on promptsource
    templates are fine-tuned on templates too. The routing row is always one per task."""
    if cfg.dataset.get("format") is None:
        with open_dict(cfg):
            cfg.dataset.format = pre.dataset.get("format", "fixed")


def zero_shot(model, data, tcfg) -> dict:
    """Test metrics of the loaded skills with uniform routing, before any fitting."""
    averaged = getattr(model.method, "averaged", None)
    with averaged() if averaged else nullcontext():
        metrics, _, _ = evaluate(model, data.loader("test"), data.test, data.task, tcfg.eval_mode,
                                 tcfg.max_new_tokens, tcfg.get("precision"), tcfg.get("rank_length_norm", 0))
    return {f"zero_shot/{k}": v for k, v in metrics.items()}


def prepare_model(pre, best, ftype: str, new_task=None):
    """(model, the new task's id, {group: parameters trained}) for a fine-tuning type.

    Encoder backbones also get a fresh head for the new task, which trains in every type (a
    classifier for the new labels cannot come from the checkpoint); the old heads stay frozen.
    """
    load, how, names = TYPES[ftype]
    tasks = head_tasks(pre.dataset) if load else [new_task]  # heads: encoder backbones only
    model = build_model(pre.model, pre.method, pre.get("router"), n_tasks=num_tasks(pre.dataset) if load else 1,
                        tasks=tasks)
    if load:
        written_by = checkpoint.read_meta(best).get("method")
        if written_by != pre.method.name:
            raise CheckpointError(f"{best} was written by method `{written_by}`, but the run's config "
                                  f"says method `{pre.method.name}`")
        checkpoint.load_weights(best, model)
    task_id = route_new_task(model.method, how, ftype)
    head = []
    if hasattr(model, "heads"):  # encoder backbones
        head = model.add_head(new_task, task_id) if load else list(model.heads.parameters())
    return model, task_id, restrict(model, names, head)


def finetune(cfg) -> dict:
    validate_trainer(cfg.trainer)
    if cfg.get("library"):  # reuse a library of experts (mmpt/library) instead of one pretrained run
        from mmpt.library.finetune import finetune_library
        return finetune_library(cfg)
    if cfg.get("finetune_type") not in TYPES:
        raise ConfigError("finetune_type", f"expected one of {list(TYPES)}, got {cfg.get('finetune_type')!r}")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", f"expected an integer, got {cfg.get('seed')!r}")
    pre, best = load_pretrained(cfg.pretrained)
    inherit_format(cfg, pre)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    model, task_id, chosen = prepare_model(pre, best, cfg.finetune_type, get_task(cfg.dataset.name))
    data = load_task(cfg, model.tokenizer, task_id)
    model.to(distributed.device())

    # The loop reads model / method from the run config: take them from the pretrained run, and
    # configure only the optimizer groups this type trains.
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.model, run_cfg.method, run_cfg.router = pre.model, pre.method, pre.get("router")
        groups = run_cfg.optimizer.get("groups") or {}
        run_cfg.optimizer.groups = {k: v for k, v in groups.items() if k in chosen or k not in GROUP_NAMES}
    log.info("fine-tuning %s (%s) on %s: %s, task id %d", cfg.pretrained, pre.method.name,
             cfg.dataset.name, cfg.finetune_type, task_id)
    extra = zero_shot(model, data, cfg.trainer)
    return fit_and_test(run_cfg, model, data, out, RunLogger(out, with_model(cfg, pre.model)), extra=extra)


def with_model(cfg, model_cfg):
    """finetune.py's config with the backbone's: W&B names the run by its fine-tuning type (there
    is no method group) and tags it with the backbone, as train.py's runs are."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model = model_cfg
    return cfg
