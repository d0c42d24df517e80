"""Run logging: metrics.jsonl (always) and Weights & Biases (logger=wandb)."""
import json
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from mmpt.engine import distributed

log = logging.getLogger(__name__)


class RunLogger:
    def __init__(self, run_dir, cfg, enabled: bool | None = None):
        self.dir = Path(run_dir)
        self.enabled = distributed.is_main() if enabled is None else enabled  # only rank 0 writes
        self.wandb = None
        lcfg = cfg.get("logger") or {}
        if self.enabled and lcfg.get("name") == "wandb":
            self.wandb = _start_wandb(lcfg, cfg, self.dir)

    def log(self, event: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"event": event, "step": step, **values}
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def rewind(self, step: int) -> None:
        """Drop the metrics.jsonl lines logged after `step`: a run resumed from its step-`step`
        checkpoint logs them again, and each step should appear once. A last line cut short by a
        kill goes too. The file is replaced atomically, so a kill here loses nothing."""
        path = self.dir / "metrics.jsonl"
        if not self.enabled or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", step) <= step:
                kept.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)

    def image(self, key: str, path) -> None:
        if self.wandb is not None:
            import wandb
            self.wandb.log({key: wandb.Image(str(path))})

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        (self.dir / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()


def _start_wandb(lcfg, cfg, run_dir):
    import wandb

    mode = lcfg.get("mode") or "online"
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
        log.warning("no W&B API key found: logging offline (sync later with `wandb sync`)")
        mode = "offline"
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("logger", None)  # never store credentials or logger internals in the run config
    return wandb.init(project=lcfg.get("project"), entity=lcfg.get("entity"), group=lcfg.get("group") or _sweep_group(),
                      name=lcfg.get("name_run"), tags=list(lcfg.get("tags") or []), mode=mode,
                      dir=str(run_dir), config=config, reinit="finish_previous")


def _sweep_group() -> str | None:
    """Runs of one Hydra multirun share a W&B group named after the sweep (study name or dir)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    study = OmegaConf.select(hc, "sweeper.study_name", default=None)
    return f"{study}-{Path(hc.sweep.dir).name}" if study else Path(hc.sweep.dir).name


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()
