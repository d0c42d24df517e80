"""Optimizer and schedule over the method's named parameter groups.

Each group name from the method gets one torch param group whose lr and weight decay come from
`optimizer.groups.<name>` (null -> `optimizer.lr` / `optimizer.weight_decay`). A method returns an
empty list for a group it can have but does not create in the configured variant; configuring a
group the method can never have is an error. The schedule is a
multiplicative factor, so the lr ratios between groups hold at every step.
"""
import logging

import torch
from transformers import get_linear_schedule_with_warmup
from transformers.optimization import Adafactor

from mmpt.errors import ConfigError

log = logging.getLogger(__name__)


def check_groups(model, groups: dict) -> None:
    """Every trainable parameter in exactly one group, and nothing frozen in any group."""
    seen = {}
    for name, params in groups.items():
        for p in params:
            if id(p) in seen:
                raise ConfigError("optimizer.groups", f"a parameter is in both `{seen[id(p)]}` and `{name}`")
            if not p.requires_grad:
                raise ConfigError("optimizer.groups", f"group `{name}` holds a frozen parameter")
            seen[id(p)] = name
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if stray:
        raise ConfigError("optimizer.groups", f"trainable parameters in no group: {stray[:5]}")


def _number(value, key: str, default=None) -> float:
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(key, f"expected a number >= 0, got {value!r}")
    return float(value)


def build_optimizer(groups: dict, cfg, total_steps: int, configurable=None):
    """Return (optimizer, scheduler, summary rows [(group, n_params, lr, weight_decay)]).

    groups: {name: parameters} that train. configurable: the names `optimizer.groups` may set
    (default: the groups' own); a configured name outside it is refused, one inside it that does
    not train here is unused (e.g. finetune.py's `backbone` lr under a type that trains adapters)."""
    configured = dict(cfg.get("groups") or {})
    allowed = set(groups) if configurable is None else set(configurable)
    # An entry with every value null is a placeholder (e.g. `head`, used by encoder backbones only).
    unknown = sorted(k for k, v in configured.items()
                     if k not in allowed and any(x is not None for x in (v or {}).values()))
    if unknown:
        raise ConfigError(f"optimizer.groups.{unknown[0]}",
                          f"this method has no parameter group `{unknown[0]}` (it has {sorted(groups)})")
    base_lr = _number(cfg.get("lr"), "optimizer.lr")
    base_wd = _number(cfg.get("weight_decay"), "optimizer.weight_decay", 0.0)
    torch_groups, summary = [], []
    for name, params in groups.items():
        if not params:  # a group this variant of the method does not create (e.g. no router)
            log.info("group %s: no parameters in this variant; its lr is unused", name)
            continue
        g = configured.get(name) or {}
        lr = _number(g.get("lr"), f"optimizer.groups.{name}.lr", base_lr)
        wd = _number(g.get("weight_decay"), f"optimizer.groups.{name}.weight_decay", base_wd)
        if lr <= 0:
            raise ConfigError(f"optimizer.groups.{name}.lr", f"expected a positive learning rate, got {lr}")
        torch_groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
        summary.append((name, sum(p.numel() for p in params), lr, wd))
    kind = cfg.get("name")
    if kind == "adamw":
        opt = torch.optim.AdamW(torch_groups, betas=tuple(cfg.betas), eps=cfg.eps)
    elif kind == "adafactor":
        # Fixed lr (no relative step, no parameter scaling), as in the MMPT reference.
        opt = Adafactor(torch_groups, scale_parameter=False, relative_step=False, warmup_init=False)
    else:
        raise ConfigError("optimizer.name", f"expected 'adamw' or 'adafactor', got {kind!r}")
    ratio = _number(cfg.get("warmup_ratio"), "optimizer.warmup_ratio", 0.0)
    if ratio > 1:
        raise ConfigError("optimizer.warmup_ratio", f"expected a fraction in [0, 1], got {ratio}")
    steps = cfg.get("warmup_steps")
    warmup = int(steps) if steps is not None else int(ratio * total_steps)
    sched = get_linear_schedule_with_warmup(opt, warmup, max(total_steps, 1))
    return opt, sched, summary
