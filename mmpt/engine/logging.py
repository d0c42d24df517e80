"""Run logging: metrics.jsonl (always) and Weights & Biases (logger=wandb).

A metric has one name everywhere: the key in metrics.jsonl is the W&B history key and the
metrics.json key (`val/router/entropy`, `test/acc`). W&B runs are named `<method>-<dataset>-s<seed>`
and tagged with method, dataset and model, so they can be found without opening them.
"""
import json
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from mmpt import distributed

log = logging.getLogger(__name__)


class RunLogger:
    """meta: the run's RunMeta (names and tags); cfg: the command's whole config, whose `logger`
    group chooses W&B and which W&B stores as the run config (its logger group left out)."""

    def __init__(self, run_dir, meta, cfg, enabled: bool | None = None):
        self.dir = Path(run_dir)
        self.enabled = distributed.is_main() if enabled is None else enabled  # only rank 0 writes
        self.wandb = None
        self.step = 0  # the last step logged: W&B history steps may not go back
        lcfg = cfg.get("logger") or {}
        if self.enabled and lcfg.get("name") == "wandb":
            self.wandb = _start_wandb(lcfg, meta, cfg, self.dir)

    def log(self, event: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        self.step = max(self.step, step)
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
            self.wandb.log({key: wandb.Image(str(path))}, step=self.step)

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        (self.dir / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        if self.wandb is not None:
            # Test (and zero-shot) scores go into the history too, at the last step, so they can be
            # plotted and compared like any metric. val/* stays as logged: the history shows each
            # eval, the summary the best checkpoint's scores.
            final = {k: v for k, v in summary.items()
                     if "/" in k and not k.startswith("val/") and isinstance(v, (int, float))}
            if final:
                self.wandb.log(final, step=self.step)
            self.wandb.summary.update(summary)
            self.wandb.finish()


def _start_wandb(lcfg, meta, cfg, run_dir):
    import wandb

    mode = lcfg.get("mode") or "online"
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
        log.warning("no W&B API key found: logging offline (sync later with `wandb sync`)")
        mode = "offline"
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("logger", None)  # never store credentials or logger internals in the run config
    tags = [*_auto_tags(meta), *(lcfg.get("tags") or [])]
    return wandb.init(project=lcfg.get("project"), entity=lcfg.get("entity"), group=lcfg.get("group") or _sweep_group(),
                      name=lcfg.get("name_run") or run_name(meta), tags=list(dict.fromkeys(tags)), mode=mode,
                      dir=str(run_dir), config=config, reinit="finish_previous")


def _auto_tags(meta) -> list[str]:
    # a hub id's or a local directory's last part names the backbone
    tags = [meta.kind, meta.dataset, Path(meta.backbone).name if meta.backbone else None]
    return [str(t)[:64] for t in tags if t]  # W&B refuses tags over 64 characters


def run_name(meta) -> str:
    """`<method>-<dataset>-s<seed>`, plus `-t<n>` for the n-th trial of a sweep."""
    name = f"{meta.kind}-{meta.dataset}-s{meta.seed}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hc = HydraConfig.get()  # mmpt's Optuna sweeper names each job's trial (shared studies: not job.num)
        trial = OmegaConf.select(hc, "sweeper.trial", default=None)
        name += f"-t{hc.job.num if trial is None else trial}"
    return name


def _sweep_group() -> str | None:
    """Runs of one Hydra multirun share a W&B group named after the sweep. A study kept in
    storage (`hydra.sweeper.storage`) is resumed by a later sweep in a new sweep dir, so its group
    is the study name alone; other sweeps add their dir, as study names repeat across presets."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    study = OmegaConf.select(hc, "sweeper.study_name", default=None)
    if study and OmegaConf.select(hc, "sweeper.storage", default=None):
        return study
    return f"{study}-{Path(hc.sweep.dir).name}" if study else Path(hc.sweep.dir).name


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()
