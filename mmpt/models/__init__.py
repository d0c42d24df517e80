"""Build the model a run trains: backbone (frozen) + method, wrapped for loss/score/generate."""
from mmpt.models.backbone import load_backbone
from mmpt.models.seq2seq import Seq2SeqModel, shapes, tag_sites, wrap


def build_model(model_cfg, method_cfg, router_cfg=None, n_tasks: int = 1) -> Seq2SeqModel:
    """Method parameters are initialised from the global RNG: seed it first (transformers.set_seed).

    n_tasks: how many task ids the data has (rows of task-conditioned routing tables).
    """
    from mmpt.methods import build_method  # methods import models.seq2seq helpers

    backbone, tokenizer = load_backbone(model_cfg)
    backbone.requires_grad_(False)
    info = {"sites": tag_sites(backbone), **shapes(backbone), "n_tasks": n_tasks}
    method = build_method(method_cfg, backbone, info, router_cfg)
    return wrap(backbone, tokenizer, method)


__all__ = ["build_model", "load_backbone", "Seq2SeqModel"]
