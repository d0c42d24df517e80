"""A new fine-tuning type and a new library type, added the way a contributor adds them: a module
in its room (mmpt/recipes/finetune_types/, mmpt/library/types/) and its conf/finetune_type/<name>.yaml,
in a copy of the project where no other file may change (tests/extension_kit.py). Each runs the
user's commands in the copy: finetune.py (a few steps), the library build, the report; the numbers
come from the runs' own files."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from extension_kit import ProjectCopy
from test_library import make_run

FAST = ["dataset=cb", "dataset.max_length=48", "k_shot=4", "seed=0", "trainer.max_steps=2", "trainer.eval_every=2",
        "trainer.batch_size=4", "trainer.eval_batch_size=64"]

MEAN_Z = '''"""MeanZ: a new routing row that starts as the mean of the pre-training tasks' rows; only it trains."""
import torch

from mmpt.recipes.finetune_types.spec import FINETUNE_TYPES, FinetuneType


def mean_row(method) -> int:
    task_id = method.add_task()
    with torch.no_grad():
        for sel in method.selectors.values():
            sel.logits.copy_(sel.frozen.mean(0, keepdim=True))
    return task_id


FINETUNE_TYPES.register("MeanZ")(FinetuneType(load=True, routing=mean_row, trains=("routing",)))
'''
MEAN_Z_YAML = """# @package _global_
# MTTL transfer (pretrained=): a new routing row from the mean of the old ones; only it trains.
finetune_type: MeanZ
"""

SOFTMAX_WEIGHTED = '''"""softmax_weighted: LoraHub-style weights through a softmax of learned logits / experts.temperature."""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mmpt.library.methods import Weighted
from mmpt.library.registry import LIBRARY_TYPES, method_cfg


@dataclass
class SoftmaxOptions:
    temperature: float


class SoftmaxWeighted(Weighted):
    def __init__(self, cfg, backbone, info, library, stack):
        super().__init__(cfg, backbone, info, library, stack)
        self.expert_weights = nn.Parameter(torch.zeros(len(self.expert_names)))

    def mixture(self):
        return (self.expert_weights / self.cfg.temperature).softmax(-1)

    @contextmanager
    def routing(self, batch, repeat: int = 1):
        w = self.mixture()
        for layer in self._layers.values():
            layer.weights = w
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.weights = None

    def eval_stats(self, aux):
        return {f"experts/{n}": w.item() for n, w in zip(self.expert_names, self.mixture().detach())}


@LIBRARY_TYPES.register(("lora", "softmax_weighted"), config=SoftmaxOptions, trains=("routing",))
def softmax_weighted(lib, opts, backbone, info):
    cfg = method_cfg("softmax_weighted", temperature=float(opts["temperature"]))
    return SoftmaxWeighted(cfg, backbone, info, lib, lib.lora_stack())
'''
SOFTMAX_YAML = """# @package _global_
# Library (LoRA experts): one learned logit per expert, mixed by softmax(logits / temperature).
finetune_type: softmax_weighted
experts:
  temperature: 1.0          # softmax temperature over the experts' logits
"""


def report_rows(copy: ProjectCopy, runs: str) -> dict:
    copy.run("-m", "mmpt.report", runs)
    with open(copy.path / runs / "report.csv") as f:
        return {r["label"]: r for r in csv.DictReader(f) if r["metric"] == "acc"}


def metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.subprocess
def test_a_new_finetuning_type_is_a_module_and_a_yaml(tmp_path):
    copy = ProjectCopy(tmp_path / "project")
    copy.add("mmpt/recipes/finetune_types/mean_z.py", MEAN_Z)
    copy.add("conf/finetune_type/MeanZ.yaml", MEAN_Z_YAML)
    pre = make_run(copy.path / "pre", "poly_lora", "glue_superglue_mix", "dataset.tasks=[cb,rte]")
    copy.run("finetune.py", f"pretrained={pre}", "finetune_type=MeanZ", "optimizer.groups.routing.lr=0.1", *FAST,
             "hydra.run.dir=runs/meanz")
    run = copy.path / "runs" / "meanz"
    old, new = load_file(pre / "checkpoints" / "best" / "trainable.safetensors"), \
        load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    assert new and set(new) == {k for k in old if k.endswith(".logits")}  # the new rows train, nothing else
    start = torch.stack([old[k].mean(0) for k in sorted(new)])  # each selector's mean of the 2 tasks' rows
    moved = torch.stack([new[k][-1] for k in sorted(new)])       # the row MeanZ appended (task id 2)
    assert not torch.allclose(moved, start) and torch.allclose(moved, start, atol=0.25)  # two Adam steps of lr 0.1
    m = metrics(run)
    assert m["trainable_params"] == sum(v[-1].numel() for v in new.values())
    row = report_rows(copy, "runs")["poly_lora/MeanZ"]
    assert float(row["mean"]) == pytest.approx(100 * m["test/acc"], abs=1e-9)


@pytest.mark.subprocess
def test_a_new_library_type_is_a_module_and_a_yaml_with_its_options(tmp_path):
    copy = ProjectCopy(tmp_path / "project")
    copy.add("mmpt/library/types/softmax_weighted.py", SOFTMAX_WEIGHTED)
    copy.add("conf/finetune_type/softmax_weighted.yaml", SOFTMAX_YAML)
    for task in ("cb", "rte"):
        make_run(copy.path / "experts" / task, "lora", task)
    copy.run("-m", "mmpt.library", "build", "--out", "lib", "experts/cb", "experts/rte")
    copy.run("finetune.py", "library=lib", "finetune_type=softmax_weighted", "experts.temperature=0.5",
             "optimizer.groups.routing.lr=0.5", *FAST, "hydra.run.dir=runs/sw")
    run = copy.path / "runs" / "sw"
    (logits,) = load_file(run / "checkpoints" / "best" / "trainable.safetensors").values()
    m = metrics(run)
    assert logits.shape == (2,) and logits.abs().sum() > 0.1 and m["trainable_params"] == 2  # trained from 0
    # the type's effect, its option included: the mixture is softmax(logits / 0.5), as its eval reports
    mix = (logits / 0.5).softmax(-1)
    assert [m["test/experts/cb"], m["test/experts/rte"]] == pytest.approx(mix.tolist(), abs=1e-6)
    assert not torch.allclose(mix, logits.softmax(-1), atol=1e-3)  # temperature 1 would mix otherwise
    row = report_rows(copy, "runs")["library/softmax_weighted"]
    assert float(row["mean"]) == pytest.approx(100 * m["test/acc"], abs=1e-9)
