"""What the recipes share: a run's data, the one place that decides what trains, and fit + final
evaluation (train, reload the best-val weights, score val and test, write metrics.json)."""
import json
import logging
import time
from pathlib import Path

from mmpt import trial
from mmpt.data import get_task, load_splits, resolve_data_dir
from mmpt.data.mixture import MixtureData, apply_format, load_mixture
from mmpt.data.splits import kshot
from mmpt.data.task_data import TaskData
from mmpt.engine import checkpoint, cost, sharding
from mmpt.engine.evaluate import check_length_norm, evaluate
from mmpt.engine.loop import Trainer
from mmpt.errors import ConfigError
from mmpt.report.figures import draw

log = logging.getLogger(__name__)


# -- data --
def load_data(cfg, tokenizer, seed):
    """One task -> TaskData; a mixture (`dataset.tasks`) -> MixtureData, which has the same interface."""
    data_dir = resolve_data_dir(cfg.paths.data_dir)
    if cfg.dataset.get("tasks"):
        if cfg.get("k_shot") is not None:
            raise ConfigError("k_shot", "k-shot sampling takes one task, not a mixture (`dataset.tasks`)")
        return load_mixture(cfg.dataset, tokenizer, cfg.trainer, seed, data_dir)
    splits = load_splits(cfg.dataset.name, data_dir, seed, cfg.dataset.get("val_fraction", 0.1))
    splits = kshot(splits, cfg.get("k_shot"), seed)  # few-shot baselines (e.g. LoRA from scratch)
    return TaskData(get_task(cfg.dataset.name), splits, tokenizer, cfg.dataset, cfg.trainer, seed)


def load_task(cfg, tokenizer, task_id: int):
    """A fine-tuning run's held-out task: its (k-shot) splits, its examples carrying `task_id`."""
    if cfg.dataset.get("tasks"):
        raise ConfigError("dataset", "fine-tuning takes one held-out task, not a mixture")
    name, data_dir = cfg.dataset.name, resolve_data_dir(cfg.paths.data_dir)
    splits = kshot(load_splits(name, data_dir, cfg.seed, cfg.dataset.get("val_fraction", 0.1)),
                   cfg.k_shot, cfg.seed)
    if (cfg.dataset.get("format") or "fixed") == "fixed":
        return TaskData(get_task(name), splits, tokenizer, cfg.dataset, cfg.trainer, cfg.seed, task_id=task_id)
    if cfg.dataset.get("task_id_from", "task") != "task":
        raise ConfigError("dataset.task_id_from", "fine-tuning gives the new task one routing row: use `task`")
    splits = apply_format(name, splits, cfg.dataset, data_dir, cfg.seed)  # promptsource templates
    return MixtureData(cfg.dataset, {name: splits}, tokenizer, cfg.trainer, cfg.seed, task_offset=task_id)


# -- what trains: decided here, for every recipe, and handed to the engine --
def _only(model, groups: dict) -> dict:
    """Make exactly the parameters of `groups` trainable; return `groups`."""
    model.requires_grad_(False)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    return groups


def method_groups(model) -> dict:
    """train.py: every group of the method, plus the heads of an encoder (empty groups included:
    the variants a method can have, whose lrs the config may still set)."""
    return _only(model, model.param_groups())


def chosen_groups(model, names, head=()) -> dict:
    """Fine-tuning: exactly the named groups (None: every group the model has), plus `head` (an
    encoder's head for the new task). `backbone` is every backbone weight no method group owns."""
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
    return _only(model, chosen)


# -- fit and evaluate --
def final_eval(model, data, settings, out: Path, val_eval: dict | None = None) -> dict:
    """Evaluate the current weights on val and test (settings: EvaluationSettings); write
    predictions; return prefixed metrics.

    val_eval: the metrics, stats and prediction rows of the eval that chose these weights (the best
    checkpoint's meta), which scoring val again would only repeat; None scores val here.
    On screen: the task metrics and the method's `summary_stats` (default: all its stats)."""
    result, shown = {}, {}
    for split, examples in (("val", data.val), ("test", data.test)):
        if split == "val" and val_eval is not None:
            metrics, stats, rows = val_eval["metrics"], val_eval["stats"], val_eval["rows"]
        else:
            metrics, rows, stats = evaluate(model, data.loader(split), examples, data.task, settings)
        result.update({f"{split}/{k}": v for k, v in {**metrics, **stats}.items()})
        summary = model.method.summary_stats or stats
        shown.update({f"{split}/{k}": v for k, v in {**metrics, **stats}.items() if k in metrics or k in summary})
        if settings.save_predictions:
            (out / "predictions").mkdir(exist_ok=True)
            with open(out / "predictions" / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    log.info("final: %s", ", ".join(f"{k}={v:.4f}" for k, v in shown.items() if isinstance(v, float)))
    return result


def check_eval_mode(model, settings) -> None:
    """Refuse, before training, an evaluation (EvaluationSettings) the model cannot do."""
    check_length_norm(model, settings.length_norm)
    if settings.mode == "generate" and not model.family.can_generate:
        raise ConfigError("trainer.eval_mode", f"this {model.backbone.config.model_type} backbone is an encoder "
                          "with classification heads and no decoder: it cannot generate; use trainer.eval_mode=rank")


def save_figures(model, out: Path, logger) -> None:
    """Draw what the method shows (mask gates, routing heatmaps, expert choice) and log the images."""
    with sharding.gathered(model):  # fsdp: the method's tables whole
        figures = model.method.figures()
    for key, path in draw(figures, out).items():
        logger.image(key, path)


def fit_and_test(run, model, data, groups: dict, meta, extra: dict | None = None, configurable=None) -> dict:
    """Train `groups`, reload the best-val weights, evaluate them on val and test, write
    metrics.json (with `extra`, e.g. fine-tuning's zero-shot scores). run: the recipe's started
    Run (recipes/start.py: config, run context, settings, folder)."""
    cfg, out = run.cfg, run.out
    check_eval_mode(model, run.settings.evaluation)  # before training, not at the first eval
    main = f"val/{data.task.main_metric}"
    # in a sweep's trial: the hook reporting each evaluation to it (None outside one); the engine
    # knows only the hook
    on_eval = trial.eval_callback(run.ctx.trial, cfg.get("optimized_metric"), main)
    logger = run.logger(meta)
    trainer = Trainer(model, data, groups, meta, run.settings, out, logger,
                      resume=cfg.get("resume", False), configurable=configurable, on_eval=on_eval)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s on %s: %d trainable / %d parameters, %d optimizer steps", meta.kind,
             cfg.dataset.name, n_train, sum(p.numel() for p in model.parameters()), trainer.total)
    progress = trainer.fit()
    if progress.pruned:  # the sweep's pruner stopped it: the best eval's val scores so far, no test
        val = checkpoint.read_meta(checkpoint.find(out / "checkpoints" / "best"))["val_eval"]
        metrics = {f"val/{k}": v for k, v in {**val["metrics"], **val["stats"]}.items()}
        metrics.update(pruned=True, pruned_step=progress.step)
    else:
        best = checkpoint.load_weights(checkpoint.find(out / "checkpoints" / "best"), model)
        metrics = final_eval(model, data, run.settings.evaluation, out, best.get("val_eval"))
    metrics.update(**(extra or {}), best_step=progress.best_step, trainable_params=n_train,
                   train_time_s=round(progress.train_time_s, 2), optimized_metric_key=main,
                   total_time_s=round(trainer.elapsed(), 2))  # both summed over resumed parts
    # what the run cost: peak memory, training throughput, adapter and backbone sizes
    best_dir = checkpoint.find(out / "checkpoints" / "best")
    metrics.update(cost.costs(model, progress.tokens, progress.train_time_s, best_dir, trainer.device))
    save_figures(model, out, logger)
    logger.finish(metrics)
    return metrics


def evaluate_only(run, model, data, meta) -> dict:
    """Nothing trains (e.g. a library merge on a text-to-text backbone): score val and test."""
    check_eval_mode(model, run.settings.evaluation)
    logger = run.logger(meta)
    start = time.perf_counter()
    metrics = final_eval(model, data, run.settings.evaluation, run.out)
    logger.log("eval", {k: v for k, v in metrics.items() if k.startswith("val/")}, 0)
    metrics.update(best_step=0, trainable_params=0, train_time_s=0.0,
                   optimized_metric_key=f"val/{data.task.main_metric}",
                   total_time_s=round(time.perf_counter() - start, 2))
    save_figures(model, run.out, logger)
    logger.finish(metrics)
    return metrics
