"""LoRA experts: a `lora` run gives one expert (its adapter, named after its task); a `poly_lora` run
one per skill. Every expert file holds `<module>.lora_A` [r, d_in] and `<module>.lora_B` [d_out, r],
B already times alpha / r, so B @ A is the expert's update of that Linear's weight."""
import torch
from omegaconf import OmegaConf

from mmpt.library.experts import EXTRACTORS, backbone_of, run_info
from mmpt.library.store import Expert
from mmpt.methods.adapters import LoRALinear, PolyLoRALinear


def _modules(model, cls) -> dict:
    return {n: m for n, m in model.backbone.named_modules() if isinstance(m, cls)}


def lora_compat(model_cfg: dict, targets: list, rank: int) -> dict:
    return {"kind": "lora", "backbone": backbone_of(model_cfg), "targets": sorted(targets), "rank": rank}


@EXTRACTORS.register("lora")
def lora_expert(cfg, model, run) -> list:
    """The run's adapter, named after its task; B is stored times alpha / r."""
    layers = _modules(model, LoRALinear)
    tensors = {}
    for name, m in layers.items():
        tensors[f"{name}.lora_A"] = m.lora_A.detach().float()
        tensors[f"{name}.lora_B"] = (m.scale * m.lora_B).detach().float()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    info = {"task": cfg.dataset.name, "skill": None, **run_info(run)}
    return [Expert(cfg.dataset.name, "lora", tensors, lora_compat(model_cfg, list(layers), model.method.rank), info)]


@EXTRACTORS.register("poly_lora")
def poly_skill_experts(cfg, model, run) -> list:
    """Each skill of the bank is one expert, `skill<i>`: its A and B with every split (MHR head)
    choosing it, i.e. the split blocks concatenated as PolyLoRALinear concatenates them."""
    layers = _modules(model, PolyLoRALinear)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    compat = lora_compat(model_cfg, list(layers), model.method.rank)
    experts = []
    for s in range(model.method.n_skills):
        tensors = {}
        for name, m in layers.items():
            A = torch.cat(list(m.lora_A[:, s]), 0)  # [n_splits * d_in / n_splits, r] = [d_in, r]
            B = torch.cat(list(m.lora_B[:, s]), 1)  # [r, d_out]
            tensors[f"{name}.lora_A"] = A.T.detach().float()
            tensors[f"{name}.lora_B"] = (m.scale * B.T).detach().float()
        info = {"task": cfg.dataset.name, "skill": s, **run_info(run)}
        experts.append(Expert(f"skill{s}", "poly_lora", tensors, dict(compat), info))
    return experts
