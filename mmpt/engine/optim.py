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


def build_optimizer(groups: dict, settings, total_steps: int, configurable=None):
    """Return (optimizer, scheduler, summary rows [(group, n_params, lr, weight_decay)]).

    groups: {name: parameters} that train; settings: mmpt.settings.OptimizerSettings (values
    checked there). configurable: the names `optimizer.groups` may set (default: the groups' own);
    a configured name outside it is refused, one inside it that does not train here is unused
    (e.g. finetune.py's `backbone` lr under a type that trains adapters)."""
    configured = settings.groups
    allowed = set(groups) if configurable is None else set(configurable)
    # An entry with every value null is a placeholder (e.g. `head`, used by encoder backbones only).
    unknown = sorted(k for k, g in configured.items()
                     if k not in allowed and (g.lr is not None or g.weight_decay is not None))
    if unknown:
        raise ConfigError(f"optimizer.groups.{unknown[0]}",
                          f"this method has no parameter group `{unknown[0]}` (it has {sorted(groups)})")
    torch_groups, summary = [], []
    for name, params in groups.items():
        if not params:  # a group this variant of the method does not create (e.g. no router)
            log.info("group %s: no parameters in this variant; its lr is unused", name)
            continue
        g = configured.get(name)
        lr = settings.lr if g is None or g.lr is None else g.lr
        wd = settings.weight_decay if g is None or g.weight_decay is None else g.weight_decay
        if lr <= 0:
            raise ConfigError(f"optimizer.groups.{name}.lr", f"expected a positive learning rate, got {lr}")
        torch_groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
        summary.append((name, sum(p.numel() for p in params), lr, wd))
    if settings.name == "adamw":
        opt = torch.optim.AdamW(torch_groups, betas=settings.betas, eps=settings.eps)
    else:  # adafactor (mmpt/settings.py refuses any other name)
        # Fixed lr (no relative step, no parameter scaling), as in the MMPT reference.
        opt = Adafactor(torch_groups, scale_parameter=False, relative_step=False, warmup_init=False)
    steps = settings.warmup_steps
    warmup = steps if steps is not None else int(settings.warmup_ratio * total_steps)
    sched = get_linear_schedule_with_warmup(opt, warmup, max(total_steps, 1))
    return opt, sched, summary
