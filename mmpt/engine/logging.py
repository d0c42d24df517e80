"""Run logging: metrics.jsonl (always) and Weights & Biases (logger=wandb).

A metric has one name everywhere: the key in metrics.jsonl is the W&B history key and the
metrics.json key (`val/router/entropy`, `test/acc`). W&B runs are named `<method>-<dataset>-s<seed>`
and tagged with method, dataset and model, so they can be found without opening them.
"""
import json
import logging
import os
from pathlib import Path

from mmpt import distributed

log = logging.getLogger(__name__)


class RunLogger:
    """meta: the run's RunMeta (names and tags); wandb: mmpt.settings.WandbSettings to log to W&B
    too (logger=wandb), None for the local files only."""

    def __init__(self, run_dir, meta, wandb=None, enabled: bool | None = None):
        self.dir = Path(run_dir)
        self.enabled = distributed.is_main() if enabled is None else enabled  # only rank 0 writes
        self.wandb = None
        self.step = 0  # the last step logged: W&B history steps may not go back
        if self.enabled and wandb is not None:
            self.wandb = _start_wandb(wandb, meta, self.dir)

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


def _start_wandb(ws, meta, run_dir):
    import wandb

    mode = ws.mode
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
        log.warning("no W&B API key found: logging offline (sync later with `wandb sync`)")
        mode = "offline"
    tags = [*_auto_tags(meta), *ws.tags]
    return wandb.init(project=ws.project, entity=ws.entity, group=ws.group, name=ws.name or run_name(meta, ws.job_index),
                      tags=list(dict.fromkeys(tags)), mode=mode, dir=str(run_dir), config=ws.config,
                      reinit="finish_previous")


def _auto_tags(meta) -> list[str]:
    # a hub id's or a local directory's last part names the backbone
    tags = [meta.kind, meta.dataset, Path(meta.backbone).name if meta.backbone else None]
    return [str(t)[:64] for t in tags if t]  # W&B refuses tags over 64 characters


def run_name(meta, job_index: int | None = None) -> str:
    """`<method>-<dataset>-s<seed>`, plus `-t<n>` for the n-th trial of a sweep (mmpt's Optuna
    sweeper numbers trials across the processes sharing a study; other sweeps: the job number)."""
    name = f"{meta.kind}-{meta.dataset}-s{meta.seed}"
    return name if job_index is None else f"{name}-t{job_index}"


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()
