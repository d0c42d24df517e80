"""train(cfg): one training run from a composed config to metrics.json. Pure apart from the run dir."""
import json
import logging
import os
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from transformers import set_seed

from mmpt.data import EncodedSplit, get_task, load_splits, make_loader, num_batches, resolve_data_dir
from mmpt.data.mixture import load_mixture, num_tasks
from mmpt.data.splits import kshot
from mmpt import trial
from mmpt.engine import checkpoint, distributed
from mmpt.engine.evaluate import check_length_norm, evaluate
from mmpt.engine.logging import RunLogger
from mmpt.engine.loop import Trainer, validate_trainer
from mmpt.errors import ConfigError
from mmpt.models import build_model

log = logging.getLogger(__name__)


class TaskData:
    """The splits of one task, encoded for the model's tokenizer, and their loaders."""

    def __init__(self, task, splits: dict, tokenizer, dcfg, tcfg, seed: int, task_id: int = 0):
        self.task, self.t, self.seed = task, tcfg, seed
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        self.bucket, self.pad_id = dcfg.get("bucket", True), tokenizer.pad_token_id
        # task_id: the routing row of this task (fine-tuning appends one after the pre-training tasks)
        self.encoded = {name: EncodedSplit(examples, tokenizer, dcfg.max_length, task.verbalizers, task_id=task_id)
                        for name, examples in splits.items()}
        self.train_batches = num_batches(self.encoded["train"], tcfg.batch_size)

    def loader(self, split: str, epoch: int = 0, skip: int = 0):
        train = split == "train"
        size = self.t.batch_size if train else self.t.eval_batch_size
        return make_loader(self.encoded[split], size, train=train, seed=self.seed, epoch=epoch,
                           bucket=self.bucket or not train, skip=skip, pad_id=self.pad_id)


def run_dir(cfg) -> Path:
    """paths.output_dir: Hydra's run dir by default; mean_over_seeds points it at seed_<s>/."""
    return Path(cfg.paths.output_dir)


# What a resumed command may change: where files are read and written, how runs are logged, and
# how many CPU threads it takes.
RUN_CONTROL = ("resume", "paths", "logger", "optimized_metric", "trainer.threads")


def config_changes(saved, cfg) -> list[str]:
    """`key: saved -> new` for every config value that differs, run-control keys aside; the
    `*.name` keys (which method, task, optimizer) first."""
    def flat(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    a, b = (flat(OmegaConf.to_container(c, resolve=False)) for c in (saved, cfg))
    keys = sorted(a.keys() | b.keys(), key=lambda k: (not k.endswith(".name"), k))
    keys = [k for k in keys if not any(k == c or k.startswith(c + ".") for c in RUN_CONTROL)]
    return [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in keys if a.get(k) != b.get(k)]


def claim_run_dir(cfg) -> None:
    """Write this command's `.hydra/` (config, hydra, overrides) into Hydra's run dir and log to
    `<job>.log` there, unless the command is refused first.

    Hydra writes neither itself (conf/hydra/default.yaml), so a refused command leaves a finished
    run's files byte for byte as they were. resume=true is refused when the dir holds a run whose
    config differs in more than RUN_CONTROL keys; when accepted, the run keeps the `.hydra/` of
    its first start.
    """
    if not HydraConfig.initialized():
        return  # called as a library (tests): the caller owns the directory
    hydra = HydraConfig.get()
    out = Path(hydra.runtime.output_dir)
    saved = out / ".hydra" / "config.yaml"
    resuming = bool(cfg.get("resume")) and saved.exists()
    if resuming:
        changes = config_changes(OmegaConf.load(saved), cfg)
        if changes:
            raise ConfigError("resume", f"{out} holds another run ({'; '.join(changes[:3])}"
                              f"{'; ...' if len(changes) > 3 else ''}); resume=true only continues the "
                              "same run: choose another hydra.run.dir")
    if distributed.is_main() and not resuming:
        files = {"config.yaml": cfg, "hydra.yaml": HydraConfig.instance().cfg, "overrides.yaml": hydra.overrides.task}
        for name, node in files.items():
            tmp = saved.with_name(name + ".tmp")  # written whole or not at all: other ranks read it
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(OmegaConf.to_yaml(node))
            os.replace(tmp, saved.with_name(name))
    if not distributed.is_main():
        return  # under torchrun only rank 0 writes files and logs
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.name == "mmpt-run-log"]:  # a sweep's previous job
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(out / f"{hydra.job.name}.log")
    handler.name = "mmpt-run-log"
    handler.setFormatter(next((h.formatter for h in root.handlers if h.formatter), None))
    root.addHandler(handler)


def load_task_data(cfg, tokenizer, seed):
    task = get_task(cfg.dataset.name)
    splits = load_splits(cfg.dataset.name, resolve_data_dir(cfg.paths.data_dir), seed,
                         cfg.dataset.get("val_fraction", 0.1))
    splits = kshot(splits, cfg.get("k_shot"), seed)  # few-shot baselines (e.g. LoRA from scratch)
    return TaskData(task, splits, tokenizer, cfg.dataset, cfg.trainer, seed)


def load_data(cfg, tokenizer, seed):
    """One task -> TaskData; a mixture (`dataset.tasks`) -> MixtureData, which has the same interface."""
    if cfg.dataset.get("tasks"):
        if cfg.get("k_shot") is not None:
            raise ConfigError("k_shot", "k-shot sampling takes one task, not a mixture (`dataset.tasks`)")
        return load_mixture(cfg.dataset, tokenizer, cfg.trainer, seed, resolve_data_dir(cfg.paths.data_dir))
    return load_task_data(cfg, tokenizer, seed)


def head_tasks(dcfg) -> list:
    """The Task behind each task id (encoder backbones build one head per task)."""
    if not dcfg.get("tasks"):
        return [get_task(dcfg.name)]
    if dcfg.get("task_id_from", "task") != "task":
        return []  # template ids: only text-to-text (T5) backbones, which need no heads
    return [get_task(name) for name in dcfg.tasks]


def final_eval(model, data, tcfg, out: Path, val_eval: dict | None = None) -> dict:
    """Evaluate the current weights on val and test; write predictions; return prefixed metrics.

    val_eval: the metrics, stats and prediction rows of the eval that chose these weights (the best
    checkpoint's meta), which scoring val again would only repeat; None scores val here.
    On screen: the task metrics and the method's `summary_stats` (default: all its stats)."""
    result, shown = {}, {}
    for split, examples in (("val", data.val), ("test", data.test)):
        if split == "val" and val_eval is not None:
            metrics, stats, rows = val_eval["metrics"], val_eval["stats"], val_eval["rows"]
        else:
            metrics, rows, stats = evaluate(model, data.loader(split), examples, data.task, tcfg.eval_mode,
                                            tcfg.max_new_tokens, tcfg.get("precision"),
                                            tcfg.get("rank_length_norm", 0))
        result.update({f"{split}/{k}": v for k, v in {**metrics, **stats}.items()})
        summary = getattr(model.method, "summary_stats", stats)
        shown.update({f"{split}/{k}": v for k, v in {**metrics, **stats}.items() if k in metrics or k in summary})
        if tcfg.get("save_predictions", True):
            (out / "predictions").mkdir(exist_ok=True)
            with open(out / "predictions" / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    log.info("final: %s", ", ".join(f"{k}={v:.4f}" for k, v in shown.items() if isinstance(v, float)))
    return result


def train(cfg) -> dict:
    validate_trainer(cfg.trainer)
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", f"expected an integer, got {cfg.get('seed')!r}")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    model = build_model(cfg.model, cfg.method, cfg.get("router"), n_tasks=num_tasks(cfg.dataset),
                        tasks=head_tasks(cfg.dataset))
    if cfg.get("init_from"):  # an adapter trained elsewhere (PEFT); mmpt.export writes them
        from mmpt.export.importer import init_from  # mmpt.export imports this module
        init_from(cfg.init_from, model, cfg.model, head_tasks(cfg.dataset))
    data = load_data(cfg, model.tokenizer, cfg.seed)
    return fit_and_test(cfg, model, data, out, RunLogger(out, cfg))


def fit_and_test(cfg, model, data, out: Path, logger, extra: dict | None = None) -> dict:
    """Train, reload the best-val weights, evaluate them on val and test, write metrics.json
    (with `extra`, e.g. fine-tuning's zero-shot scores). Shared by train() and finetune()."""
    check_length_norm(model, cfg.trainer.get("rank_length_norm", 0))  # before training, not at the first eval
    if cfg.trainer.eval_mode == "generate" and not model.backbone.config.is_encoder_decoder:
        raise ConfigError("trainer.eval_mode", f"this {model.backbone.config.model_type} backbone is an encoder "
                          "with classification heads and no decoder: it cannot generate; use trainer.eval_mode=rank")
    main = f"val/{data.task.main_metric}"
    trainer = Trainer(model, data, cfg, out, logger, resume=cfg.get("resume", False),
                      on_eval=trial.eval_callback(cfg, main, out))  # None outside a sweep's trial
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s on %s: %d trainable / %d parameters, %d optimizer steps", cfg.method.name,
             cfg.dataset.name, n_train, sum(p.numel() for p in model.parameters()), trainer.total)
    progress = trainer.fit()
    if progress.pruned:  # the sweep's pruner stopped it: the best eval's val scores so far, no test
        val = checkpoint.read_meta(checkpoint.find(out / "checkpoints" / "best"))["val_eval"]
        metrics = {f"val/{k}": v for k, v in {**val["metrics"], **val["stats"]}.items()}
        metrics.update(pruned=True, pruned_step=progress.step)
    else:
        best = checkpoint.load_weights(checkpoint.find(out / "checkpoints" / "best"), model)
        metrics = final_eval(model, data, cfg.trainer, out, best.get("val_eval"))
    metrics.update(**(extra or {}), best_step=progress.best_step, trainable_params=n_train,
                   train_time_s=round(progress.train_time_s, 2), optimized_metric_key=main,
                   total_time_s=round(trainer.elapsed(), 2))  # both summed over resumed parts
    if hasattr(model.method, "save_figures"):  # e.g. learned mask gates, routing heatmaps
        for key, path in model.method.save_figures(out).items():
            logger.image(key, path)
    logger.finish(metrics)
    return metrics
