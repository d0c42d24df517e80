"""Run folders: claiming the folder of a new run, and opening the folder of a finished one.

A finished train.py run folder holds `.hydra/config.yaml` (its composed config), `checkpoints/best`
(the best-val trainable weights and their meta) and `metrics.json`. Fine-tuning (`pretrained=`),
export (`python -m mmpt.export`) and library builds open it here, with one set of error messages,
and rebuild its model with `load_model`.
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from transformers import set_seed

from mmpt.config_keys import drop_defaults
from mmpt.context import RunContext
from mmpt.data.mixture import num_tasks, tasks_of
from mmpt import distributed, settings
from mmpt.engine import checkpoint
from mmpt.errors import CheckpointError, ConfigError
from mmpt.models import build_model, check_config, quantize

CONFIG = Path(".hydra") / "config.yaml"

# What a resumed command may change: where files are read and written, how runs are logged, and
# how many CPU threads it takes.
RUN_CONTROL = ("resume", "paths", "logger", "optimized_metric", "trainer.threads")


# -- a new run's folder --
def run_dir(cfg) -> Path:
    """paths.output_dir: Hydra's run dir by default; mean_over_seeds points it at seed_<s>/."""
    return Path(cfg.paths.output_dir)


def config_changes(saved, cfg) -> list[str]:
    """`key: saved -> new` for every config value that differs, run-control keys aside; the
    `*.name` keys (which method, task, optimizer) first."""
    def flat(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    a, b = (drop_defaults(flat(OmegaConf.to_container(c, resolve=False))) for c in (saved, cfg))
    keys = sorted(a.keys() | b.keys(), key=lambda k: (not k.endswith(".name"), k))
    keys = [k for k in keys if not any(k == c or k.startswith(c + ".") for c in RUN_CONTROL)]
    return [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in keys if a.get(k) != b.get(k)]


def check_command(cfg) -> None:
    """The refusals a command's config alone decides (trainer and optimizer settings, trainer.strategy, the
    quantization keys, a method a quantized backbone cannot train), made before Hydra makes the run
    dir (mmpt.cli.TorchrunRunDir.on_run_start) and again before claim_run_dir: a refused command
    writes nothing."""
    from mmpt.engine import sharding

    model = cfg.get("model")  # finetune.py: null, its backbone comes from the pretrained run
    if model is not None:
        check_config(model, cfg.get("method"))
    if cfg.get("trainer") is not None:
        training = settings.of(cfg).training  # every trainer and optimizer value, one line for a bad one
        sharding.check_strategy(training.strategy, model is not None and quantize.quantized(model))


def claim_run_dir(cfg, ctx: RunContext) -> None:
    """Write this command's `.hydra/` (config, hydra, overrides) into Hydra's run dir (the run
    context's) and log to `<job>.log` there, unless the command is refused first.

    Hydra writes neither itself (conf/hydra/default.yaml), so a refused command leaves a finished
    run's files byte for byte as they were. resume=true is refused when the dir holds a run whose
    config differs in more than RUN_CONTROL keys; when accepted, the run keeps the `.hydra/` of
    its first start.
    """
    if ctx.run_dir is None:
        return  # called as a library (tests): the caller owns the directory
    out = ctx.run_dir
    saved = out / CONFIG
    resuming = bool(cfg.get("resume")) and saved.exists()
    if resuming:
        changes = config_changes(OmegaConf.load(saved), cfg)
        if changes:
            raise ConfigError("resume", f"{out} holds another run ({'; '.join(changes[:3])}"
                              f"{'; ...' if len(changes) > 3 else ''}); resume=true only continues the "
                              "same run: choose another hydra.run.dir")
    if distributed.is_main() and not resuming:
        files = {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": ctx.hydra_yaml,
                 "overrides.yaml": OmegaConf.to_yaml(list(ctx.overrides))}
        for name, text in files.items():
            tmp = saved.with_name(name + ".tmp")  # written whole or not at all: other ranks read it
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, saved.with_name(name))
    if not distributed.is_main():
        return  # under torchrun only rank 0 writes files and logs
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.name == "mmpt-run-log"]:  # a sweep's previous job
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(out / f"{ctx.job_name}.log")
    handler.name = "mmpt-run-log"
    handler.setFormatter(next((h.formatter for h in root.handlers if h.formatter), None))
    root.addHandler(handler)


# -- a finished run's folder --
@dataclass
class FinishedRun:
    path: Path
    cfg: object        # its composed config (.hydra/config.yaml)
    best: Path         # its complete checkpoints/best directory
    meta: dict         # the best checkpoint's meta.json (method, model, step, ...)


def open_run(path, use: str = "", key: str | None = None) -> FinishedRun:
    """The finished train.py run at `path`. `use` says what wants it (for the message, e.g. "export
    handles"), `key` the config key that named the folder (e.g. `pretrained`). Anything else - no
    config, a finetune.py run, no complete best checkpoint, one written by another method - is a
    one-line CheckpointError naming the folder."""
    if not path:
        raise ConfigError(key or "run", f"set {key or 'run'}=<the directory of a finished train.py run>")
    path = Path(path)
    where = f"{key}={path}" if key else str(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{where}: no {CONFIG.as_posix()}; expected the directory of a finished train.py run")
    try:
        cfg = OmegaConf.load(path / CONFIG)
    except Exception as e:  # a YAML or OmegaConf error: the file is not a config
        raise CheckpointError(f"{path / CONFIG}: unreadable ({str(e).strip().splitlines()[0]})") from None
    if "finetune_type" in cfg or "method" not in cfg:
        raise CheckpointError(f"{where} is a finetune.py run; {use or 'this'} takes train.py runs")
    best = checkpoint.find(path / "checkpoints" / "best")
    if best is None:
        raise CheckpointError(f"{where}: no complete checkpoints/best (did the run finish its first evaluation?)")
    meta = checkpoint.read_meta(best)
    if meta.get("method") != cfg.method.name:
        raise CheckpointError(f"{best} was written by method `{meta.get('method')}`, but the run's config "
                              f"says method `{cfg.method.name}`")
    return FinishedRun(path, cfg, best, meta)


def build_run_model(cfg, n_tasks: int | None = None, tasks=None):
    """The model a train.py config describes (backbone, method, router; one head per task of its
    dataset on encoders), freshly initialised from the global RNG. n_tasks / tasks: other task ids
    than the config's dataset has (fine-tuning's PolyRand: one new task)."""
    n_tasks = num_tasks(cfg.dataset) if n_tasks is None else n_tasks
    tasks = tasks_of(cfg.dataset) if tasks is None else tasks
    return build_model(cfg.model, cfg.method, cfg.get("router"), n_tasks=n_tasks, tasks=tasks)


def load_model(run: FinishedRun):
    """The run's model with its best weights, in eval mode (initialised with the run's seed first,
    so what the checkpoint does not hold is the run's own init)."""
    set_seed(run.cfg.seed)
    model = build_run_model(run.cfg)
    checkpoint.load_weights(run.best, model)
    return model.eval()
