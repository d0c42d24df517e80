"""Experts out of finished train.py runs: the extractor registry and `build`.

EXTRACTORS maps a run's `method.name` to a function (run config, loaded model, run dir) -> list of
Expert. A method joins the library by registering one, from any module that build imports:

    @extractor("prompt_tuning")
    def prompt_experts(cfg, model, run): ...

Runs are rebuilt by mmpt.export.runs.load_run (the run's config and best checkpoint).
"""
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mmpt.errors import CheckpointError
from mmpt.library.store import Expert, LibraryError, check_compatible, refuse_nonempty, write
from mmpt.methods.adapters import LoRALinear, PolyLoRALinear

EXTRACTORS = {}

# Model config keys that do not change the backbone's float weights (dropout, adapter defaults,
# pooling, and how the frozen weights were quantized: experts trained on a 4-bit backbone and on
# its float source share one library)
NOT_BACKBONE = ("dropout", "targets", "pool_prompt", "quantization", "double_quant", "compute_dtype")


def extractor(method: str):
    """Register the decorated function as the extractor of runs of `method`."""
    def register(fn):
        EXTRACTORS[method] = fn
        return fn
    return register


def backbone_of(model_cfg: dict) -> dict:
    """What identifies a backbone's weights: its model config minus NOT_BACKBONE."""
    return {k: v for k, v in model_cfg.items() if k not in NOT_BACKBONE}


def backbone_name(model_cfg: dict) -> str:
    return str(model_cfg.get("name_or_path") or model_cfg.get("build"))


def run_info(run: Path) -> dict:
    """source, val_metric, val_score (the run's best-checkpoint main val metric, from metrics.json)."""
    info = {"source": str(run.resolve()), "val_metric": None, "val_score": None}
    path = run / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        key = metrics.get("optimized_metric_key")
        info.update(val_metric=key, val_score=metrics.get(key))
    return info


def _modules(model, cls) -> dict:
    return {n: m for n, m in model.backbone.named_modules() if isinstance(m, cls)}


def lora_compat(model_cfg: dict, targets: list, rank: int) -> dict:
    return {"kind": "lora", "backbone": backbone_of(model_cfg), "targets": sorted(targets), "rank": rank}


@extractor("lora")
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


@extractor("poly_lora")
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


def find_runs(source) -> list:
    """A run dir itself, or every run dir (a `.hydra/config.yaml`) under a multirun dir."""
    path = Path(source)
    if (path / ".hydra" / "config.yaml").is_file():
        return [path]
    if not path.is_dir():
        raise LibraryError(f"source {path} does not exist")
    runs = sorted({c.parent.parent for c in path.rglob(".hydra/config.yaml")})
    if not runs:
        raise LibraryError(f"source {path}: no train.py run (no .hydra/config.yaml) in it or under it")
    return runs


def read_config(run: Path):
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    if "finetune_type" in cfg:
        raise LibraryError(f"{run} is a finetune.py run; a library takes the experts of train.py runs")
    method = cfg.method.name
    if method not in EXTRACTORS:
        raise LibraryError(f"{run}: method `{method}` gives no library experts (these do: {sorted(EXTRACTORS)})")
    return cfg


def collect(sources) -> tuple:
    """(experts, model config) of every run under `sources`. Configs are checked first (a mixed
    backbone is refused before any model is loaded)."""
    from mmpt.export.runs import load_run  # builds models: imported only when building

    runs = [r for s in sources for r in find_runs(s)]
    configs = {run: read_config(run) for run in runs}
    # one stub expert per run: the backbone check names the odd run before any loading
    stubs = [Expert(f"{c.dataset.name} run", c.method.name, {},
                    {"backbone": backbone_of(OmegaConf.to_container(c.model, resolve=True))},
                    {"source": str(r)}) for r, c in configs.items()]
    check_compatible(stubs)
    experts = []
    for run, cfg in configs.items():
        try:
            _, model = load_run(run)
        except CheckpointError as e:
            raise LibraryError(str(e)) from None
        with torch.no_grad():
            experts += EXTRACTORS[cfg.method.name](cfg, model, run)
    model_cfg = OmegaConf.to_container(next(iter(configs.values())).model, resolve=True)
    return experts, model_cfg


def build(out, sources) -> Path:
    """Write the library of every expert in `sources` (run or multirun dirs) to `out`."""
    refuse_nonempty(Path(out))  # before loading anything
    experts, model_cfg = collect(sources)
    return write(out, experts, model_cfg)


# prompt_tuning and prefix runs give prompt / prefix experts (registered on import)
from mmpt.library import prompt_experts  # noqa: E402,F401
