"""Libraries of 64 and 256 experts (llama_tiny) build, cluster and route; the synthetic
libraries (random LoRA experts, no training) other library tests use too."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, toy_batch
from mmpt.data import get_task
from mmpt.library import Expert, Library
from mmpt.library.lora_experts import lora_compat
from mmpt.library.mbc import ClusterOptions, cluster
from mmpt.library.methods import ArrowLinear
from mmpt.library.phatgoose import GATES, PhatgooseLinear
from mmpt.library.store import write
from mmpt.methods.adapters import LoRALinear
from mmpt.models import build_model
from mmpt.recipes.library import prepare_library_model
from test_library import experts_of


def layout(model="llama_tiny", rank=2, over=()):
    """(model config, {target: (A shape, B shape)}) of a LoRA run on `model`."""
    cfg = compose_cfg([f"model={model}", "method=lora", f"method.rank={rank}", "dataset=cb", *over])
    m = build_model(cfg.model, cfg.method, None, n_tasks=1)
    shapes = {n: (tuple(x.lora_A.shape), tuple(x.lora_B.shape)) for n, x in m.backbone.named_modules()
              if isinstance(x, LoRALinear)}
    return OmegaConf.to_container(cfg.model, resolve=True), shapes


def synthetic_library(path, n: int, model="llama_tiny", rank=2, seed=0, groups=None, over=(), std=0.3):
    """A library of `n` random LoRA experts named t0, t1, ... (task = name). With `groups`, expert i
    is its group's (i % groups) random direction plus a little noise: clusters to find."""
    model_cfg, shapes = layout(model, rank, over)
    g = torch.Generator().manual_seed(seed)
    centres = [{k: torch.randn(s, generator=g) for m, (a, b) in shapes.items()
                for k, s in ((f"{m}.lora_A", a), (f"{m}.lora_B", b))} for _ in range(groups or 0)]
    experts = []
    for i in range(n):
        tensors = {}
        for m, (a, b) in shapes.items():
            for k, s in ((f"{m}.lora_A", a), (f"{m}.lora_B", b)):
                noise = torch.randn(s, generator=g)
                tensors[k] = std * (centres[i % groups][k] + 0.3 * noise if groups else noise)
        experts.append(Expert(f"t{i}", "lora", tensors, lora_compat(model_cfg, list(shapes), rank),
                              {"task": f"t{i}", "skill": None, "source": f"/synthetic/t{i}"}))
    return Library(write(path, experts, model_cfg))


CB = get_task("cb")


@pytest.mark.parametrize("n", [64, 256])
def test_large_libraries_build_cluster_and_route(tmp_path, n):
    lib = synthetic_library(tmp_path / "lib", n, groups=8)
    groups, used = cluster(lib, ClusterOptions(k=8))
    assert sorted(t for ts in groups.values() for t in ts) == sorted(lib.names) and used == 64
    # the 8 planted groups are found: each cluster holds the experts of one group (i % 8)
    assert sorted(sorted(int(t[1:]) % 8 for t in ts) for ts in groups.values()) == [[g] * (n // 8) for g in range(8)]
    gates = {m: torch.randn(n, A.shape[-1]) for m, (A, _) in lib.lora_stack().items()}
    lib.cached(GATES, lambda: gates)
    for ftype, cls, k in (("arrow", ArrowLinear, 4), ("phatgoose", PhatgooseLinear, 2)):  # their YAMLs' top_k
        model, _ = prepare_library_model(lib, ftype, experts_of(ftype), CB)
        model.eval()
        layer = next(m for m in model.backbone.modules() if isinstance(m, cls))
        assert layer.A.shape[0] == n and layer.top_k == k
        out = model.score(toy_batch(model.tokenizer))[0]
        assert torch.isfinite(out).all()
        picked = layer.picks.sum().item()
        assert picked == k * layer.tokens  # every token mixed exactly top_k experts
