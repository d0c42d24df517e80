"""The registries are open for extension: each test registers a small new kind through the public
registry, from this file alone, and trains it one step through the recipe a user runs.

A method (METHODS), a router (ROUTERS), a fine-tuning type (FINETUNE_TYPES) and a library type
(LIBRARY_TYPES); each registration is removed again when its test ends."""
import json
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from torch import nn

from conftest import compose_cfg
from mmpt.library.extract import build
from mmpt.library.methods import Weighted
from mmpt.library.types import LIBRARY_TYPES
from mmpt.methods import METHODS, Method
from mmpt.recipes import finetune, train
from mmpt.recipes.transfer import FINETUNE_TYPES, FinetuneType
from mmpt.routers import ROUTERS
from mmpt.routers.skills import Table

FAST = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.dropout=0.0",
        "dataset=cb", "dataset.max_length=48", "trainer.max_steps=1", "trainer.eval_batch_size=64",
        "trainer.batch_size=4"]


@pytest.fixture
def registered():
    """register(registry, name, config=..., **extra)(obj), unregistered after the test."""
    done = []

    def register(registry, name, **kw):
        def add(obj):
            registry.register(name, **kw)(obj)
            done.append((registry, name))
            return obj
        return add
    yield register
    for registry, name in done:
        registry.unregister(name)


def weights(run_dir) -> dict:
    """The trainable weights of a run's best checkpoint."""
    return load_file(run_dir / "checkpoints" / "best" / "trainable.safetensors")


def pretrain(path, *over):
    """A finished train.py run in `path`, its config saved as the CLI saves it."""
    cfg = compose_cfg([*FAST, *over], run_dir=path)
    metrics = train(cfg)
    (path / ".hydra").mkdir()
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    return metrics


# -- a method --
@dataclass
class EmbedScaleConfig:
    name: str = "embed_scale"
    init: float = 1.0


class EmbedScale(Method):
    """A learned scale per embedding dimension on the input embeddings (the `prompt` group)."""

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.scale = nn.Parameter(torch.full((info["d_model"],), float(cfg.init)))

    def prepare(self, batch, backbone):
        embeds = backbone.get_input_embeddings()(batch["input_ids"]) * self.scale
        return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}, {}

    def param_groups(self):
        return {"prompt": [self.scale]}


def test_a_new_method_registers_and_trains(tmp_path, registered):
    registered(METHODS, "embed_scale", config=EmbedScaleConfig)(EmbedScale)
    cfg = compose_cfg([*FAST, "method=lora"], run_dir=tmp_path)
    with open_dict(cfg):
        cfg.method = METHODS.get("embed_scale").default_config()
        cfg.optimizer.groups = {"prompt": {"lr": 0.1}}
    metrics = train(cfg)
    assert metrics["trainable_params"] == 32 and 0 <= metrics["test/acc"] <= 1
    scale = weights(tmp_path)["method.scale"]
    assert scale.shape == (32,) and not torch.equal(scale, torch.ones(32))  # one AdamW step moved it
    assert json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())["method"] == "embed_scale"


# -- a router (a task-to-skill selector) --
@dataclass
class SoftmaxConfig:
    name: str = "softmax_table"
    granularity: str = "coarsegrained"
    temperature: float = 1.0


class SoftmaxTable(Table):
    """Deterministic softmax over a learned (task, split, skill) table: no sampling noise."""

    def __init__(self, n_tasks, n_splits, n_skills, temperature=1.0):
        super().__init__(n_tasks, n_splits, n_skills)
        self.temperature = temperature

    def probs(self, task_ids, sample):
        return (self.table(task_ids) / self.temperature).softmax(-1)


def test_a_new_router_registers_and_trains(tmp_path, registered):
    registered(ROUTERS, "softmax_table", config=SoftmaxConfig, kind="skills")(SoftmaxTable)
    # two steps: the skills' B start at 0, so the routing has a gradient from the second step on
    cfg = compose_cfg([*FAST, "method=poly_lora", "method.n_skills=3", "method.rank=2", "trainer.max_steps=2",
                       "trainer.eval_every=2"], run_dir=tmp_path)
    with open_dict(cfg):
        cfg.router = ROUTERS.get("softmax_table").default_config(temperature=0.5)
    train(cfg)
    saved = weights(tmp_path)
    (logits,) = [v for k, v in saved.items() if k.endswith("selectors.all.logits")]
    assert logits.shape == (1, 3)
    assert logits.abs().max() > 0.01  # U(-1e-3, 1e-3) at init; a step of Adam at lr 0.1 moves it ~0.1


# -- a fine-tuning type --
def mean_row(method) -> int:
    """A new routing row that starts as the mean of the pre-training tasks' rows."""
    task_id = method.add_task()
    with torch.no_grad():
        for sel in method.selectors.values():
            sel.logits.copy_(sel.frozen.mean(0, keepdim=True))
    return task_id


def test_a_new_finetuning_type_registers_and_trains(tmp_path, registered):
    registered(FINETUNE_TYPES, "MeanZ")(FinetuneType(load=True, routing=mean_row, trains=("routing",)))
    pretrain(tmp_path / "pre", "method=poly_lora", "method.n_skills=3", "method.rank=2", "dataset=glue_superglue_mix",
             "dataset.tasks=[cb,rte]", "dataset.max_eval_per_task=8")
    cfg = compose_cfg(["dataset=wic", "dataset.max_length=48", "trainer.max_steps=1", "k_shot=8",
                       "trainer.eval_batch_size=64", "finetune_type=MeanZ", f"pretrained={tmp_path / 'pre'}"],
                      config_name="finetune", run_dir=tmp_path / "ft")
    metrics = finetune(cfg)
    old, new = weights(tmp_path / "pre"), weights(tmp_path / "ft")
    assert set(new) == {k for k in old if k.endswith(".logits")}  # the new rows train, nothing else
    start = torch.stack([old[k] for k in sorted(new)]).mean(1)  # [selectors, 3]: the mean of the 2 rows
    moved = torch.stack([new[k] for k in sorted(new)])[:, 0]
    assert metrics["trainable_params"] == 3 * len(new) and not torch.allclose(moved, start)
    assert torch.allclose(moved, start, atol=0.2)  # one step of lr 0.1 from the mean row


# -- a library type --
class SoftmaxWeighted(Weighted):
    """LoraHub-style weights through a softmax over learned logits (starting uniform)."""

    def __init__(self, cfg, backbone, info, library, stack):
        super().__init__(cfg, backbone, info, library, stack)
        self.expert_weights = nn.Parameter(torch.zeros(len(self.expert_names)))

    @contextmanager
    def routing(self, batch, repeat: int = 1):
        w = self.expert_weights.softmax(-1)
        for layer in self._layers.values():
            layer.weights = w
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.weights = None


def test_a_new_library_type_registers_and_trains(tmp_path, registered):
    registered(LIBRARY_TYPES, ("lora", "softmax_weighted"), trains=("routing",))(
        lambda lib, opts, backbone, info: SoftmaxWeighted(OmegaConf.create({"name": "library_softmax_weighted"}),
                                                          backbone, info, lib, lib.lora_stack()))
    for task in ("cb", "rte"):
        pretrain(tmp_path / task, "method=lora", "method.rank=2", f"dataset={task}")
    lib = build(tmp_path / "lib", [tmp_path / "cb", tmp_path / "rte"])
    cfg = compose_cfg(["dataset=wic", "dataset.max_length=48", "trainer.max_steps=1", "k_shot=8",
                       "trainer.eval_batch_size=64", "finetune_type=softmax_weighted", f"library={lib}"],
                      config_name="finetune", run_dir=tmp_path / "ft")
    metrics = finetune(cfg)
    (logits,) = weights(tmp_path / "ft").values()
    assert metrics["trainable_params"] == 2 and logits.shape == (2,) and logits.abs().sum() > 0
