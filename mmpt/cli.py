"""What train.py and finetune.py share: seeds averaging, sweep-friendly errors, one-line failures."""
import json
import logging
import statistics
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from mmpt.engine import distributed
from mmpt.experiment import claim_run_dir, run_dir
from mmpt.errors import ConfigError, MMPTError

log = logging.getLogger("mmpt")


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def over_seeds(fn, cfg) -> dict:
    """Train once per seed of `mean_over_seeds` (each in <run>/seed_<s>) and write their mean."""
    seeds = list(cfg.mean_over_seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError("mean_over_seeds", f"expected a list of integer seeds, got {seeds!r}")
    out, runs = run_dir(cfg), []
    for seed in seeds:
        sub = cfg.copy()
        with open_dict(sub):
            sub.seed, sub.mean_over_seeds = seed, None
            sub.paths.output_dir = str(out / f"seed_{seed}")
        runs.append(fn(sub))
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    mean.update({f"{k}_std": statistics.pstdev([r[k] for r in runs]) for k in keys if "/" in k})
    mean.update(seeds=seeds, optimized_metric_key=runs[0].get("optimized_metric_key"))
    if distributed.is_main():
        (out / "metrics.json").write_text(json.dumps(mean, indent=1, sort_keys=True))
    return mean


def main_wrapper(fn, cfg):
    """Run fn(cfg) and return the optimized metric.

    A user error (MMPTError) exits with status 2 and one line, no traceback. Inside a sweep it is
    re-raised instead, so the sweeper records the trial as failed and goes on.
    """
    try:
        with distributed.session():
            claim_run_dir(cfg)  # .hydra/ and the log file; refuses to resume into another run
            metrics = over_seeds(fn, cfg) if cfg.get("mean_over_seeds") else fn(cfg)
    except MMPTError as e:
        log.error("%s", e)
        if in_sweep():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    key = cfg.get("optimized_metric") or metrics.get("optimized_metric_key")
    if key not in metrics:
        raise ConfigError("optimized_metric", f"{key!r} is not among the run's metrics {sorted(metrics)[:10]}")
    return metrics[key]
