"""How every recipe (train, transfer, library) starts a run: its settings and seed checked, then
its folder, its peak-memory count and its seed; the logger once the recipe knows the RunMeta."""
from dataclasses import dataclass
from pathlib import Path

from transformers import set_seed

from mmpt import distributed, settings
from mmpt.context import RunContext
from mmpt.engine import cost
from mmpt.engine.logging import RunLogger
from mmpt.errors import ConfigError
from mmpt.runs import run_dir


@dataclass(frozen=True)
class Run:
    """A run as its recipe starts it: its config, run context, checked settings and folder."""
    cfg: object
    ctx: RunContext
    settings: settings.Settings
    out: Path

    def enter(self) -> None:
        """Make the run folder, count this run's peak memory (not an earlier job's in this
        process), and seed: what the recipe builds next is the run's own init. After the recipe's
        own refusals, so that a refused command writes nothing."""
        self.out.mkdir(parents=True, exist_ok=True)
        cost.start_run(distributed.device())
        set_seed(self.cfg.seed)

    def logger(self, meta) -> RunLogger:
        """The run's metrics files (and W&B run, logger=wandb), named after its RunMeta."""
        return RunLogger(self.out, meta, settings.wandb(self.cfg, self.ctx))


def begin(cfg, ctx: RunContext) -> Run:
    """What every recipe refuses first, writing nothing: a bad trainer or optimizer value (one line
    naming its key), a seed that is not an integer."""
    checked = settings.of(cfg)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError("seed", f"expected an integer, got {seed!r}")
    return Run(cfg, ctx, checked, run_dir(cfg))
