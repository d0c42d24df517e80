"""Typed settings: the config's trainer, optimizer and logger blocks, read and checked once.

The engine takes these objects and reads no config. They are built here, from a composed config,
and every bad value is one ConfigError naming its key: before Hydra makes the run dir
(mmpt.runs.check_command) and again when a recipe starts (mmpt/recipes/start.py), the same code.
The defaults and their comments stay in the YAML (conf/train.yaml's and conf/finetune.yaml's
`trainer` blocks, conf/optimizer/, conf/logger/): a field here carries a type and its key, no
default. To add a setting: its key with default and comment in the YAML, its field and check here,
and its use in the engine.
"""
from dataclasses import dataclass

from mmpt.context import RunContext
from mmpt.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")  # trainer.strategy (engine/sharding.py)


@dataclass(frozen=True)
class TrainingSettings:
    """The loop's settings (conf/train.yaml `trainer`; engine/loop.py)."""
    batch_size: int               # trainer.batch_size (the data's loaders read it too)
    grad_accum: int               # trainer.grad_accum
    max_steps: int | None         # trainer.max_steps: overrides epochs; 0 = evaluate only
    epochs: int | None            # trainer.epochs (when max_steps is null)
    grad_clip: float | None       # trainer.grad_clip
    eval_every: int | None        # trainer.eval_every
    patience: int | None          # trainer.patience
    log_every: int                # trainer.log_every
    precision: str                # trainer.precision (the training step's autocast)
    gradient_checkpointing: bool  # trainer.gradient_checkpointing (engine/recompute.py)
    strategy: str                 # trainer.strategy (engine/sharding.py)


@dataclass(frozen=True)
class EvaluationSettings:
    """How a model is scored (conf/train.yaml `trainer`; engine/evaluate.py): in training, in the
    final evaluation and in fine-tuning's zero-shot scoring."""
    mode: str                 # trainer.eval_mode: rank | generate
    max_new_tokens: int       # trainer.max_new_tokens (generate)
    precision: str            # trainer.precision
    length_norm: float        # trainer.rank_length_norm (rank)
    save_predictions: bool    # trainer.save_predictions (the final evaluation's predictions/)


@dataclass(frozen=True)
class GroupSettings:
    """optimizer.groups.<name>: null takes optimizer.lr / optimizer.weight_decay."""
    lr: float | None
    weight_decay: float | None


@dataclass(frozen=True)
class OptimizerSettings:
    """conf/optimizer/ (engine/optim.py)."""
    name: str                         # optimizer.name: adamw | adafactor
    lr: float                         # optimizer.lr
    weight_decay: float               # optimizer.weight_decay (null: none)
    betas: tuple[float, float]        # optimizer.betas
    eps: float                        # optimizer.eps
    warmup_ratio: float               # optimizer.warmup_ratio (null: none)
    warmup_steps: int | None          # optimizer.warmup_steps
    groups: dict[str, GroupSettings]  # optimizer.groups


@dataclass(frozen=True)
class Settings:
    training: TrainingSettings
    evaluation: EvaluationSettings
    optimizer: OptimizerSettings


@dataclass(frozen=True)
class WandbSettings:
    """logger=wandb (conf/logger/wandb.yaml; engine/logging.py)."""
    project: str | None
    entity: str | None
    group: str | None            # logger.group, else the sweep's (the run context's)
    name: str | None             # logger.name_run, else engine/logging.py's run_name
    job_index: int | None        # the sweep job's trial number: run_name's -t<n>
    tags: tuple[str, ...]        # logger.tags, after the automatic ones
    mode: str                    # logger.mode
    config: dict                 # the run config W&B stores (its logger group left out)


def of(cfg) -> Settings:
    """The run's settings from its composed config (cfg.trainer, cfg.optimizer)."""
    return Settings(training(cfg.trainer), evaluation(cfg.trainer), optimizer(cfg.optimizer))


def _int(t, key: str, low: int, what: str, null: bool = False):
    v = t.get(key)
    if v is None and null:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ConfigError(f"trainer.{key}", f"expected {what}, got {v!r}")
    return v


def _choice(t, key: str, options: tuple, prefix: str = "trainer"):
    v = t.get(key)
    if v not in options:
        raise ConfigError(f"{prefix}.{key}", f"expected {' or '.join(repr(o) for o in options)}, got {v!r}")
    return v


def training(t) -> TrainingSettings:
    batch_size = _int(t, "batch_size", 1, "an integer >= 1")
    grad_accum = _int(t, "grad_accum", 1, "an integer >= 1")
    max_steps = _int(t, "max_steps", 0, "null, 0 (evaluate only) or an integer >= 1", null=True)
    epochs = t.get("epochs")
    if max_steps is None and not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
        raise ConfigError("trainer.epochs", "set trainer.epochs >= 1 or trainer.max_steps >= 0")
    _choice(t, "eval_mode", ("rank", "generate"))  # the evaluation's, checked in this order as always
    eval_every = _int(t, "eval_every", 0, "null or an integer >= 0", null=True)
    patience = _int(t, "patience", 0, "null or an integer >= 0", null=True)
    precision = _choice(t, "precision", ("fp32", "bf16"))
    clip = t.get("grad_clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError("trainer.grad_clip", f"expected null or a positive norm, got {clip}")
    checkpointing = t.get("gradient_checkpointing")
    if not isinstance(checkpointing, bool):
        raise ConfigError("trainer.gradient_checkpointing", f"expected true or false, got {checkpointing!r}")
    strategy = t.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", f"expected one of {list(STRATEGIES)}, got {strategy!r}")
    return TrainingSettings(batch_size, grad_accum, max_steps, epochs, None if clip is None else float(clip),
                            eval_every, patience, _int(t, "log_every", 1, "an integer >= 1"), precision,
                            checkpointing, strategy)


def evaluation(t) -> EvaluationSettings:
    mode = _choice(t, "eval_mode", ("rank", "generate"))
    norm = t.get("rank_length_norm")
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or norm < 0:
        raise ConfigError("trainer.rank_length_norm", f"expected a number >= 0, got {norm!r}")
    save = t.get("save_predictions")
    if not isinstance(save, bool):
        raise ConfigError("trainer.save_predictions", f"expected true or false, got {save!r}")
    return EvaluationSettings(mode, _int(t, "max_new_tokens", 1, "an integer >= 1"),
                              _choice(t, "precision", ("fp32", "bf16")), norm, save)


def _number(value, key: str, null=None) -> float | None:
    """A number >= 0 (an lr, a weight decay); `null` stands for None."""
    if value is None:
        return null
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(key, f"expected a number >= 0, got {value!r}")
    return float(value)


def optimizer(o) -> OptimizerSettings:
    groups = {}
    for name, g in (o.get("groups") or {}).items():
        g = g or {}
        groups[name] = GroupSettings(_number(g.get("lr"), f"optimizer.groups.{name}.lr"),
                                     _number(g.get("weight_decay"), f"optimizer.groups.{name}.weight_decay"))
    lr = _number(o.get("lr"), "optimizer.lr")
    if lr is None:
        raise ConfigError("optimizer.lr", "expected a number >= 0, got None")
    weight_decay = _number(o.get("weight_decay"), "optimizer.weight_decay", 0.0)
    name = _choice(o, "name", ("adamw", "adafactor"), prefix="optimizer")
    ratio = _number(o.get("warmup_ratio"), "optimizer.warmup_ratio", 0.0)
    if ratio > 1:
        raise ConfigError("optimizer.warmup_ratio", f"expected a fraction in [0, 1], got {ratio}")
    steps = o.get("warmup_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ConfigError("optimizer.warmup_steps", f"expected null or an integer >= 0, got {steps!r}")
    betas = o.get("betas")
    if betas is None or len(betas) != 2 or not all(isinstance(b, (int, float)) for b in betas):
        raise ConfigError("optimizer.betas", f"expected two numbers, got {betas!r}")
    eps = _number(o.get("eps"), "optimizer.eps")
    return OptimizerSettings(name, lr, weight_decay, (float(betas[0]), float(betas[1])), eps, ratio, steps, groups)


def wandb(cfg, ctx: RunContext) -> WandbSettings | None:
    """logger=wandb's settings (None for any other logger), with the sweep's group and trial
    number from the run context."""
    from omegaconf import OmegaConf

    lcfg = cfg.get("logger") or {}
    if lcfg.get("name") != "wandb":
        return None
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("logger", None)  # never store credentials or logger internals in the run config
    return WandbSettings(lcfg.get("project"), lcfg.get("entity"), lcfg.get("group") or ctx.wandb_group,
                         lcfg.get("name_run"), ctx.job_index, tuple(lcfg.get("tags") or ()),
                         lcfg.get("mode") or "online", config)
