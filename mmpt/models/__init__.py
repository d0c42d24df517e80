"""Build the model a run trains: backbone (frozen) + method, wrapped by the backbone's family.

Families (mmpt/models/family.py) are registered by the modules of this package, all imported
below: T5 (seq2seq.py: text-to-text), BERT-style encoders (encoder.py: one head per task) and
decoder-only causal LMs (causal.py: the verbalizer as the prompt's continuation). A new family is
one new module here plus, for an in-process build, a YAML in conf/model/. Methods see the same
`info` whatever the family: prefix sites, widths, layers, number of task ids.
"""
import importlib
import pkgutil

from mmpt.methods import METHODS, build_method
from mmpt.models import quantize
from mmpt.models.backbone import backbone_name, load, load_backbone
from mmpt.models.family import FAMILIES, Family

# Import every module of this package: each registers what it defines, so a new family is a new
# file here. Sorted by file name, so the registry's order (listings, error messages) never varies.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["build_model", "check_config", "load_backbone", "backbone_name", "FAMILIES", "Family"]


def check_config(model_cfg, method_cfg=None) -> None:
    """Refuse, from the config alone, a model config's bad quantization keys and a method its
    backbone cannot train (method=full on a 4-bit backbone): before anything is loaded or written."""
    quantize.bnb_config(model_cfg)
    if method_cfg is not None and method_cfg.get("name") in METHODS:
        quantize.check_method(model_cfg, method_cfg.get("name"), METHODS.get(method_cfg.get("name")).obj)


def build_model(model_cfg, method_cfg, router_cfg=None, n_tasks: int = 1, tasks=None, make_method=None):
    """Method parameters are initialised from the global RNG: seed it first (transformers.set_seed).

    n_tasks: how many task ids the data has (rows of task-conditioned routing tables).
    tasks: the Task of each task id; families with heads (encoders) build one head per task from it.
    make_method: (backbone, info) -> method, instead of the method_cfg's registered method (an
    expert library's methods: mmpt/library/types/).
    The returned model's `family` answers the family-specific questions (can_generate, has_heads, ...).
    """
    if make_method is None:  # before loading: e.g. method=full on a 4-bit backbone
        quantize.check_method(model_cfg, method_cfg.get("name"), METHODS.get(method_cfg.get("name")).obj)
    backbone, tokenizer, family = load(model_cfg)
    backbone.requires_grad_(False)
    info = {"sites": family.attention_sites(backbone), **family.shapes(backbone), "n_tasks": n_tasks,
            "tokenizer": tokenizer,  # prompt init=vocab copies embeddings of its word tokens
            "targets": family.targets(backbone.config)}  # what method.target_modules=lora|poly|... stands for
    method = make_method(backbone, info) if make_method else build_method(method_cfg, backbone, info, router_cfg)
    return family.wrap(backbone, tokenizer, method, tasks, model_cfg)
