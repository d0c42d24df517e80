"""What every method shares: a frozen backbone, named parameter groups, batch -> model inputs."""
import abc

from torch import nn

from mmpt.errors import ConfigError
from mmpt.export.mapping import not_expressible

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

    # Why a PEFT adapter cannot express this method (python -m mmpt.export says it in one line).
    peft_why_not = "PEFT has no tuner for it"

    def peft_mapping(self):
        """This method's parameters under PEFT's names and config (mmpt/export/mapping.py)."""
        raise not_expressible(self.cfg.name, self.peft_why_not)

    def eval_stats(self, aux: list[dict]) -> dict:
        """Diagnostics over one evaluation, from the `aux` dicts `prepare` returned per batch."""
        return {}

    def placement_sites(self, placement: str) -> list[str]:
        stacks = PLACEMENTS[placement]
        sites = [s for s in self.info["sites"] if s.split(".")[0] in stacks]
        if not sites:
            raise ConfigError("method.placement", f"this backbone has no {placement} self-attention "
                              "(encoder-only models: use encoder or both)")
        return sites
