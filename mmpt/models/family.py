"""Backbone families: one object per family answers everything family-specific.

A family (T5 in seq2seq.py, BERT-style encoders in encoder.py, decoder-only causal LMs in causal.py)
says which loaded configs it takes, how to load a checkpoint and build its tiny in-process models,
its default adapter targets, its PEFT task type, whether it can generate, whether it has task
heads, its attention sites (where prefixes enter), its shapes, how its positions work, and how to
wrap a backbone and a method into the model a run trains. Outside mmpt/models nothing asks which
family a model is: it asks the model's `family`.

Adding a family is one module in mmpt/models (a Family subclass registered in FAMILIES; the package
imports every module it holds) plus, for an in-process build, a YAML in conf/model/ (with the build's
shape keys only: the adapter targets come from the family, not from the model YAML). A family
registered with `fallback=True` (causal: every decoder-only type) is asked after the others.
"""
import abc

from mmpt.registry import Registry

FAMILIES = Registry("backbone family", key="model.name_or_path")


class Family(abc.ABC):
    name: str = ""
    can_generate: bool = False     # eval_mode=generate works (a decoder produces text)
    has_heads: bool = False        # one classification / regression head per task (encoders)
    peft_task_type: str = ""       # PEFT's task type (picks the PeftModel subclass)
    tiny: dict = {}                # in-process builds: `model.build` name -> builder(cfg, tokenizer)

    @abc.abstractmethod
    def matches(self, config) -> bool:
        """Whether a loaded transformers config (`AutoConfig`) belongs to this family."""

    @abc.abstractmethod
    def load(self, name: str, **kwargs):
        """The pretrained model at `name` (hub id or directory), fp32 unless kwargs say otherwise."""

    @abc.abstractmethod
    def targets(self, config) -> dict:
        """The family's adapter target sets, the one place they are written: {set name: regex of
        Linear module names}, with at least `lora` (LoRA's default), `poly` (the skills'), `poly_ffn`
        (skills on the FFN too) and `ia3`. A method's `target_modules` names a set (its YAML's
        default) or gives a regex of its own; models/__init__.py hands them over as info["targets"]."""

    @abc.abstractmethod
    def attention_sites(self, backbone) -> list[str]:
        """Tag every self-attention module with its prefix site name (`mmpt_site`); return the names."""

    @abc.abstractmethod
    def shapes(self, backbone) -> dict:
        """d_model, n_heads (of keys/values), d_head and layers per stack."""

    @abc.abstractmethod
    def wrap(self, backbone, tokenizer, method, tasks, model_cfg):
        """The model a run trains: backbone + method behind forward / score (/ generate)."""

    def positions(self, backbone) -> str:
        """How the backbone encodes positions: "relative" (T5's attention biases), "rope" or
        "absolute" (a learned table added to the inputs)."""
        return "absolute"

    def rotary(self, backbone):
        """(rotary embedding module, the model's apply_rotary_pos_emb) for RoPE backbones, else None."""
        return None


def family_of(config) -> Family | None:
    """The family that takes a loaded config (None: no family does). Fallback families are asked
    last, so a family for one model type (a new module, even a subclass of the fallback's class)
    wins over the catch-all whatever the order in which the modules registered."""
    for entry in sorted(FAMILIES.entries(), key=lambda e: e.extra.get("fallback", False)):
        family = entry.obj()
        if family.matches(config):
            return family
    return None


def supported() -> str:
    """The families in words, for errors: "t5, mt5, the encoders [...] and decoder-only causal LMs"."""
    return ", ".join(e.extra["describe"] for e in FAMILIES.entries())


def family_of_build(build: str) -> Family | None:
    """The family whose in-process builds include `build` (t5_tiny, llama_tiny, ...), or None."""
    for entry in FAMILIES.entries():
        if build in entry.obj.tiny:
            return entry.obj()
    return None
