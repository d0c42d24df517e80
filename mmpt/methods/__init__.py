"""Method registry: `method.name` in the config -> class. A new method is one module + one YAML."""
from mmpt.errors import ConfigError
from mmpt.methods.full import Full
from mmpt.methods.lora import LoRA
from mmpt.methods.prefix import Prefix
from mmpt.methods.prompt_tuning import PromptTuning

METHODS = {"full": Full, "prompt_tuning": PromptTuning, "prefix": Prefix, "lora": LoRA}


def build_method(cfg, backbone, info):
    if cfg.name not in METHODS:
        raise ConfigError("method.name", f"expected one of {sorted(METHODS)}, got {cfg.name!r}")
    return METHODS[cfg.name](cfg, backbone, info)
