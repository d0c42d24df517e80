"""A toy Hydra app on mmpt's sweeper: each job reports `steps` values to its trial as training
would (mmpt.trial) and writes job.json (pid, times, trial, params) into its folder."""
import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from mmpt import trial
from mmpt.cli_context import run_context


@hydra.main(config_path=".", config_name="toy", version_base="1.3")
def main(cfg):
    start = time.time()
    if cfg.fail:
        raise RuntimeError("this trial fails")
    reporter, value, pruned = trial.reporter(run_context().trial), None, None
    for step in range(1, cfg.steps + 1):
        time.sleep(cfg.sleep)
        value = -(float(cfg.x) - 1) ** 2 + (0.5 if cfg.y == "b" else 0.0) + 0.1 * step
        if reporter is not None and reporter.report(step, value):
            pruned = step
            break
    hc = HydraConfig.get()
    Path(hc.runtime.output_dir, "job.json").write_text(json.dumps({
        "pid": os.getpid(), "start": start, "end": time.time(), "trial": hc.sweeper.get("trial"),
        "x": float(cfg.x), "y": cfg.y, "pruned": pruned}))
    return trial.Pruned(pruned, value) if pruned else value


if __name__ == "__main__":
    main()
