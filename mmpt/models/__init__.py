"""Build the model a run trains: backbone (frozen) + method, wrapped for loss/score/generate.

T5-family backbones get the text-to-text wrapper (models/seq2seq.py); encoder-only backbones
(BERT, RoBERTa, MiniLM) get one classification/regression head per task (models/encoder.py);
decoder-only causal LMs (Llama, Qwen2, GPT-2, ...) score the verbalizer as the prompt's
continuation (models/causal.py).
Methods see the same `info` either way: prefix sites, widths, layers, number of task ids.
"""
from mmpt.errors import ConfigError
from mmpt.models import causal, encoder, quantize, seq2seq
from mmpt.models.backbone import fill_targets, load_backbone
from mmpt.models.seq2seq import Seq2SeqModel


def build_model(model_cfg, method_cfg, router_cfg=None, n_tasks: int = 1, tasks=None, make_method=None):
    """Method parameters are initialised from the global RNG: seed it first (transformers.set_seed).

    n_tasks: how many task ids the data has (rows of task-conditioned routing tables).
    tasks: the Task of each task id; encoder backbones build one head per task from it.
    make_method: (backbone, info) -> method, instead of the method_cfg's registered method (an
    expert library's methods: mmpt/library/finetune.py).
    """
    from mmpt.methods import METHODS, build_method  # methods import models.seq2seq helpers

    if make_method is None:  # before loading: e.g. method=full on a 4-bit backbone
        quantize.check_method(model_cfg, method_cfg.get("name"), METHODS.get(method_cfg.get("name")))
    backbone, tokenizer = load_backbone(model_cfg)
    fill_targets(model_cfg, backbone.config)  # model=local: the adapter targets of the loaded family
    backbone.requires_grad_(False)
    if backbone.config.is_encoder_decoder:
        family = seq2seq
    else:
        family = causal if causal.is_causal_lm(backbone) else encoder
    info = {"sites": family.tag_sites(backbone), **family.shapes(backbone), "n_tasks": n_tasks,
            "tokenizer": tokenizer}  # prompt init=vocab copies embeddings of its word tokens
    method = make_method(backbone, info) if make_method else build_method(method_cfg, backbone, info, router_cfg)
    if family is not encoder:
        return family.wrap(backbone, tokenizer, method)
    if not tasks:
        raise ConfigError("model", "an encoder backbone needs the task list to build its heads")
    return encoder.wrap(backbone, tokenizer, method, tasks, model_cfg.get("pool_prompt", False))


__all__ = ["build_model", "load_backbone", "Seq2SeqModel"]
