"""Gradient checkpointing (`trainer.gradient_checkpointing=true`): activation memory for compute.

The backbone's own switch (transformers' `gradient_checkpointing_enable`) makes each block keep
only its inputs in training and run its forward again during backward. Non-reentrant
checkpointing (use_reentrant=False) is chosen because it needs nothing from the inputs: frozen
embeddings under a soft prompt need no `requires_grad` trick, and keyword arguments such as the
prefix methods' `mmpt_prefix` reach the attention again in the recomputation. It also restores
the RNG state there, so dropout draws the same masks and the losses equal those of a run
without checkpointing. Routed adapters read their mixing weights from the layers during that
recomputation, after the method's routing context has closed: the method keeps them
(`Method.recomputed`).
"""
from mmpt.errors import ConfigError


def enable(model, on: bool) -> None:
    """Turn gradient checkpointing on for the model's backbone (on: trainer.gradient_checkpointing)."""
    if not on:
        return
    backbone = model.backbone
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise ConfigError("trainer.gradient_checkpointing", f"this {backbone.config.model_type} backbone has "
                          "no gradient checkpointing in transformers: set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.2x's name for it
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.method.recomputed = True
