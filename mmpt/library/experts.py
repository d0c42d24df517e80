"""The extractor registry: which runs give library experts, and how.

EXTRACTORS maps a run's `method.name` to a function (run config, model loaded with the run's best
weights, run dir) -> list of Expert. A method joins the library by registering one:

    @EXTRACTORS.register("prompt_tuning")
    def prompt_experts(cfg, model, run): ...

lora_experts.py and prompt_experts.py register today's; extract.py imports them at its top.
"""
import json
from pathlib import Path

from mmpt.registry import Registry

EXTRACTORS = Registry("expert extractor", key="method.name")

# Model config keys that do not change the backbone's float weights (dropout, adapter defaults,
# pooling, and how the frozen weights were quantized: experts trained on a 4-bit backbone and on
# its float source share one library)
NOT_BACKBONE = ("dropout", "targets", "pool_prompt", "quantization", "double_quant", "compute_dtype")


def backbone_of(model_cfg: dict) -> dict:
    """What identifies a backbone's weights: its model config minus NOT_BACKBONE."""
    return {k: v for k, v in model_cfg.items() if k not in NOT_BACKBONE}


def run_info(run: Path) -> dict:
    """source, val_metric, val_score (the run's best-checkpoint main val metric, from metrics.json)."""
    info = {"source": str(run.resolve()), "val_metric": None, "val_score": None}
    path = run / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        key = metrics.get("optimized_metric_key")
        info.update(val_metric=key, val_score=metrics.get(key))
    return info
