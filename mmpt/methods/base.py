"""What every method shares: a frozen backbone, named parameter groups, batch -> model inputs, and
the optional hooks the recipes call (declared here with a no-op default, never looked up with hasattr).

A method is a class registered in METHODS with its config dataclass (mmpt/registry.py):

    @METHODS.register("lora", config=LoRAConfig)
    class LoRA(Method): ...

mmpt/methods/__init__.py imports every method module at its top, so the registry is complete once
`mmpt.methods` is imported; a method defined elsewhere registers itself the same way.
"""
import abc
from contextlib import nullcontext

from torch import nn

from mmpt.errors import ConfigError
from mmpt.registry import Registry

METHODS = Registry("method", key="method.name", group="method")  # defaults: conf/method/<name>.yaml

# The fixed vocabulary of parameter-group names; optimizer.groups.<name> configures each.
GROUP_NAMES = ("backbone", "prompt", "prefix", "mask", "router", "shared_embedding",
               "adapters", "routing", "head")

PLACEMENTS = {"encoder": ("encoder",), "decoder": ("decoder",), "both": ("encoder", "decoder")}


def choose(cfg, key: str, allowed):
    """Read cfg[key] and refuse anything outside `allowed`, naming the key."""
    value = cfg.get(key)
    if value not in allowed:
        raise ConfigError(f"method.{key}", f"expected one of {list(allowed)}, got {value!r}")
    return value


def positive(cfg, key: str, zero_ok: bool = False) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or value < (0 if zero_ok else 1):
        raise ConfigError(f"method.{key}", f"expected an integer >= {0 if zero_ok else 1}, got {value!r}")
    return value


class Method(nn.Module, abc.ABC):
    """Base class. `info` carries shapes derived from the backbone (sites, widths, layers)."""

    uses_router = False      # True: built with the `router` config group (which it must get)
    skill_routing = False    # True: task-to-skill routing that fine-tuning can average (MuZ) or extend
    summary_stats = None     # eval stats shown on screen at the end of a run (None: all of them)
    trains_backbone = False  # True: trains the backbone's own weights (refused on quantized backbones)
    # Set by gradient checkpointing (engine/recompute.py): the backbone's blocks run their forward
    # again during backward, after a `routing` context has closed, so such a context leaves its
    # weights on the layers until the next call replaces them.
    recomputed = False

    def __init__(self, cfg, backbone, info):
        super().__init__()
        self.cfg, self.info = cfg, info

    def prepare(self, batch, backbone):
        """Keyword arguments for the backbone's forward, and diagnostics for logging."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, {}

    @abc.abstractmethod
    def param_groups(self) -> dict:
        """{group name: [parameters]}: exactly the parameters this method trains."""

    def eval_stats(self, aux: list[dict]) -> dict:
        """Diagnostics over one evaluation, from the `aux` dicts `prepare` returned per batch."""
        return {}

    def routing(self, batch, repeat: int = 1):
        """A context in which the adapter layers read this batch's routing weights during one
        backbone call (repeat: rows per example, e.g. rank scoring's choices). Default: none."""
        return nullcontext()

    # -- fine-tuning hooks (mmpt/recipes/transfer.py) --
    def add_task(self) -> int:
        """Make room for a new task and return the task id its examples carry. Default: 0, as a
        method without per-task parameters reads the same parameters for every id."""
        return 0

    def use_average(self) -> None:
        """Replace learned task routing by the uniform average for good (MuZ). Default: nothing to average."""

    def averaged(self):
        """A context with uniform routing (zero-shot scoring). Default: the method as it is."""
        return nullcontext()

    # -- what a run shows (drawn by mmpt/report/figures.py, never by the method) --
    def figures(self) -> dict:
        """{name: figure data} (see mmpt/report/figures.py for the kinds). Default: none."""
        return {}

    def placement_sites(self, placement: str) -> list[str]:
        stacks = PLACEMENTS[placement]
        sites = [s for s in self.info["sites"] if s.split(".")[0] in stacks]
        if not sites:
            raise ConfigError("method.placement", f"this backbone has no {placement} self-attention "
                              "(encoder-only models: use encoder or both)")
        return sites
