"""What train.py and finetune.py share: user errors end the run with one clear line."""
import logging
import sys

from mmpt.errors import MMPTError

log = logging.getLogger("mmpt")


def main_wrapper(fn, cfg):
    """Run fn(cfg) and return its optimized metric; an MMPTError exits with status 2 and no traceback."""
    try:
        metrics = fn(cfg)
    except MMPTError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        if cfg.get("hparams_search"):  # inside a sweep: let the sweeper record a failed trial
            raise
        sys.exit(2)
    key = cfg.get("optimized_metric") or metrics.get("optimized_metric_key")
    return metrics.get(key)
