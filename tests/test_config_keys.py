"""Keys added later (quantization, checkpointing, strategy) at their defaults: a run made before
they existed is the same setting as one made after, for the report and for resume=true."""
from omegaconf import OmegaConf

from conftest import compose_cfg
from mmpt.report.runs import identity
from mmpt.runs import config_changes


def without_new_keys(cfg):
    old = OmegaConf.to_container(cfg, resolve=False)
    for key in ("quantization", "double_quant", "compute_dtype"):
        old["model"].pop(key)
    for key in ("gradient_checkpointing", "strategy"):
        old["trainer"].pop(key)
    return old


def test_an_old_run_and_a_new_one_at_the_defaults_are_one_setting():
    cfg = compose_cfg(["model=t5_tiny", "method=lora", "dataset=cb"])
    old = without_new_keys(cfg)
    new = OmegaConf.to_container(cfg, resolve=False)
    assert identity(old) == identity(new)
    assert config_changes(OmegaConf.create(old), cfg) == []
    # away from its default a new key is a setting of its own, and a change resume=true refuses
    other = compose_cfg(["model=t5_tiny", "method=lora", "dataset=cb", "model.quantization=nf4"])
    assert identity(OmegaConf.to_container(other, resolve=False)) != identity(old)
    assert config_changes(OmegaConf.create(old), other) == ["model.quantization: <unset> -> nf4"]
