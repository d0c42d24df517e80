"""How each method's parameters map to a PEFT adapter, registered by method name.

    @PEFT_MAPPINGS.register("lora", peft_type="LORA")
    def lora(method) -> PeftMapping: ...

A method PEFT cannot express has no entry, or a `why_not` entry (the one-line reason export and
`init_from` give). Export and import both read these declarations, so they cannot disagree; the
methods themselves know nothing of PEFT.
"""
from mmpt.export.mapping import PeftMapping, Slot, not_expressible
from mmpt.methods.adapters import transposed
from mmpt.registry import Registry
from mmpt.routers.skills import Poly

PEFT_MAPPINGS = Registry("PEFT mapping", key="method.name")

PER_TASK_WHY_NOT = ("PEFT's prompt-learning tuners hold one prompt per adapter and cannot give the examples "
                    "of one batch different prompts (per_task=true)")
# Methods with no PEFT tuner, and why (any other unregistered method: "PEFT has no tuner for it").
WHY_NOT = {
    "full": "full fine-tuning changes the backbone itself (use --format merged)",
    "prefix_routing": "PEFT has no tuner that routes prefixes per input or gates them with learned masks",
    "prompt_routing": "PEFT has no tuner that routes a pool of soft prompts per input (SMoP)",
    "poly_ia3": "PEFT's poly tuner mixes LoRA skills only",
}


def peft_mapping(method) -> PeftMapping:
    """The method's parameters under PEFT's names and config; ExportError when PEFT cannot hold them."""
    name = method.cfg.name
    if name not in PEFT_MAPPINGS:
        raise not_expressible(name, WHY_NOT.get(name, "PEFT has no tuner for it"))
    return PEFT_MAPPINGS[name](method)


def method_of(peft_type: str) -> str | None:
    """The mmpt method that reads a PEFT adapter of this type (init_from's hint)."""
    return next((e.name for e in PEFT_MAPPINGS.entries() if e.extra["peft_type"] == peft_type), None)


@PEFT_MAPPINGS.register("lora", peft_type="LORA")
def lora(method) -> PeftMapping:
    # PEFT's LoRA: same A [r, d_in], B [d_out, r] and scale lora_alpha / r (use_rslora off), also
    # on GPT-2's Conv1D, where PEFT only needs to know that the base weight is stored [in, out]
    layers = method.layers
    config = {"peft_type": "LORA", "r": method.rank, "lora_alpha": method.cfg.alpha,
              "lora_dropout": method.cfg.dropout, "target_modules": sorted(layers),
              "fan_in_fan_out": transposed(layers.values())}
    return PeftMapping(config, {f"{name}.lora_{x}.weight": Slot(getattr(m, f"lora_{x}"))
                                for name, m in layers.items() for x in "AB"})


@PEFT_MAPPINGS.register("ia3", peft_type="IA3")
def ia3(method) -> PeftMapping:
    # mmpt scales every target's output. PEFT does that for targets that are not in
    # feedforward_modules (those it scales at the input), with ia3_l of shape [d_out, 1].
    layers = method.layers
    config = {"peft_type": "IA3", "target_modules": sorted(layers), "feedforward_modules": [],
              "fan_in_fan_out": transposed(layers.values())}
    return PeftMapping(config, {f"{name}.ia3_l": Slot(m.ia3_l, (m.ia3_l.numel(), 1)) for name, m in layers.items()})


@PEFT_MAPPINGS.register("prompt_tuning", peft_type="PROMPT_TUNING")
def prompt_tuning(method) -> PeftMapping:
    if method.per_task:
        raise not_expressible(method.cfg.name, PER_TASK_WHY_NOT)
    # num_transformer_submodules=1: the prompt goes before the encoder input only (PEFT's
    # seq2seq default of 2 would also prepend a second prompt to the decoder input).
    n, d = method.prompt.shape
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": n, "token_dim": d, "num_transformer_submodules": 1}
    return PeftMapping(config, {"prompt_embeddings": Slot(method.prompt)})


@PEFT_MAPPINGS.register("prefix", peft_type="PREFIX_TUNING")
def prefix(method) -> PeftMapping:
    # PEFT's prefix tuning fills the decoder's key/value cache, one [P, layer, K|V, head, d_head]
    # table as ours; whether that cache computes what mmpt's prefix does depends on the backbone's
    # positions, which mmpt/export/prefix_cache.py decides (and converts the keys for).
    if method.per_task:
        raise not_expressible(method.cfg.name, PER_TASK_WHY_NOT)
    if any(not s.startswith("decoder.") for s in method.sites):
        raise not_expressible(method.cfg.name, "PEFT's prefix tuning reaches the decoder's key/value cache only, and "
                              f"this run puts prefixes in the encoder (method.placement={method.cfg.placement})")
    h, d = method.info["n_heads"], method.info["d_head"]
    config = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": method.prefix.shape[0],
              "num_layers": len(method.sites), "token_dim": h * d, "num_attention_heads": h,
              "num_transformer_submodules": 1}
    return PeftMapping(config, {"prompt_embeddings": Slot(method.prefix)})


@PEFT_MAPPINGS.register("poly_lora", peft_type="POLY")
def poly_lora(method) -> PeftMapping:
    # PEFT's poly tuner: the same A/B bank layout and eval routing (sigmoid, normalised), a
    # router per adapted module (a selector shared by several modules is written to each),
    # and a fixed scale 1 / r: B is stored times alpha so that B_peft / r = (alpha / r) B.
    why = "PEFT's poly tuner takes the poly selector only"
    selectors = list(method.selectors.values())
    odd = [type(s).__name__.lower() for s in selectors if type(s) is not Poly]
    odd += ["shared_skill"] * any(getattr(s, "shared_skill", False) for s in selectors)
    odd += ["fine-tuned routing rows"] * any(len(getattr(s, "frozen", ())) for s in selectors)
    if odd:
        raise not_expressible(method.cfg.name, f"{why} (this run: {odd[0]})")
    if transposed(method.layers.values()):
        raise not_expressible(method.cfg.name, "PEFT's poly tuner adapts torch.nn.Linear layers only, and this "
                              "run adapts Conv1D layers (GPT-2)")
    config = {"peft_type": "POLY", "poly_type": "poly", "r": method.rank, "n_tasks": method.n_tasks,
              "n_skills": method.n_skills, "n_splits": method.n_splits, "target_modules": sorted(method.layers)}
    tensors = {}
    for name, m in method.layers.items():
        tensors[f"{name}.poly_lora_A"] = Slot(m.lora_A)
        tensors[f"{name}.poly_lora_B"] = Slot(m.lora_B, scale=method.cfg.alpha)
        tensors[f"{name}.poly_router.module_logits"] = Slot(method.selector_of(name).logits)
    return PeftMapping(config, tensors)
