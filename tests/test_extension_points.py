"""The extension points, used the way a contributor uses them: each kind is added through its public
route only (a new module in its room and, where the kind has one, a YAML in conf/) to a throw-away
copy of the project (tests/extension_kit.py), which then runs the user's commands: train.py, the
export and the report. If a new kind only worked after another file was edited (an import list, a
table of names, a schema), its run would fail here. The contributor's files are in
tests/extensions/<kind>/, at the paths they take in the project.

Shared fixtures and helpers first, then one section per kind, each `subprocess` (real commands in
a copy): a method, a router, a backbone family, a fine-tuning type, a library type, a pruner and a
storage.
"""
import csv
import json
import sqlite3
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file

from extension_kit import ProjectCopy
from test_library import make_run

# A tiny T5 and a few steps on CB: every command below takes seconds.
T5 = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.dropout=0.0"]
SHORT = ["dataset=cb", "dataset.max_length=48", "trainer.batch_size=4", "trainer.eval_batch_size=64"]


EXTENSIONS = Path(__file__).parent / "extensions"
KINDS = ("method", "router", "family")  # tests/extensions/<kind>: files at their paths in the project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> ProjectCopy:
    """One copy of the project for the module, with every new kind's files added (and nothing else)."""
    copy = ProjectCopy(tmp_path_factory.mktemp("ext") / "project")
    for kind in KINDS:
        for path in sorted(p for p in (EXTENSIONS / kind).rglob("*") if p.is_file()):
            copy.add(path.relative_to(EXTENSIONS / kind).as_posix(), path.read_text())
    return copy


def weights(run_dir) -> dict:
    """The trainable weights of a run's best checkpoint."""
    return load_file(Path(run_dir) / "checkpoints" / "best" / "trainable.safetensors")


def train_py(project: ProjectCopy, run_dir: Path, *args: str) -> dict:
    """`python train.py ARGS` in the copy; the run's metrics.json."""
    project.run("train.py", *args, f"hydra.run.dir={run_dir}")
    return json.loads((run_dir / "metrics.json").read_text())


def export(project: ProjectCopy, run_dir: Path, fmt: str = "merged") -> Path:
    out = run_dir.parent / f"{run_dir.name}-{fmt}"
    project.run("-m", "mmpt.export", str(run_dir), "--format", fmt, "--out", str(out))
    return out


def reported(project: ProjectCopy, root: Path) -> list[dict]:
    """The rows of report.csv written by `python -m mmpt.report ROOT`."""
    project.run("-m", "mmpt.report", str(root), "--out", str(root / "report"))
    with open(root / "report" / "report.csv") as f:
        return list(csv.DictReader(f))


# What every probe script (run in the copy, so it imports the copy's mmpt) starts with: the logits of
# a run's model as mmpt computes them, and of a plain transformers model, on one fixed batch.
PROBE = '''
import json, torch
from mmpt.runs import load_model, open_run

DEC = torch.tensor([[0, 2000, 3000], [0, 4000, 2500]])  # decoder inputs, for encoder-decoders


def batch_of(model):
    ids = torch.randint(1000, 5000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "task_id": torch.zeros(2, dtype=torch.long)}


def logits(net, batch, **kw):
    """A transformers model's logits on the batch (kw: a method's inputs instead of the batch's ids)."""
    kw = kw or {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    extra = {"decoder_input_ids": DEC} if net.config.is_encoder_decoder else {}
    with torch.no_grad():
        return net(**kw, **extra).logits


def mmpt_logits(model, batch):
    """The logits of the backbone as the model's method runs it (its inputs, its routing)."""
    kw, _ = model.method.prepare(batch, model.backbone)
    with model.method.routing(batch):
        return logits(model.backbone, batch, **kw)


def run_model(path):
    run = open_run(path)
    return run.cfg, load_model(run)


def answer(**values):
    print(json.dumps(values))
'''


def probe(project: ProjectCopy, code: str) -> dict:
    """Run PROBE + code in the copy; the JSON its last printed line holds."""
    out = project.run("-c", PROBE + textwrap.dedent(code))
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- a method: tests/extensions/method (mmpt/methods/gain.py, conf/method/gain.yaml) --
@pytest.mark.subprocess
def test_a_new_method_trains_exports_and_is_reported(project, tmp_path):
    run = tmp_path / "runs" / "gain"
    metrics = train_py(project, run, *T5, *SHORT, "method=gain", "trainer.max_steps=3", "trainer.eval_every=3")
    saved = weights(run)
    assert saved and all(k.endswith(".gain") for k in saved)  # the method's parameters and nothing else
    assert metrics["trainable_params"] == sum(v.numel() for v in saved.values())
    assert all(v.abs().max() > 1e-3 for v in saved.values())  # every gain got a gradient and moved
    merged = export(project, run, "merged")
    got = probe(project, f'''
        from transformers import AutoModelForSeq2SeqLM
        from mmpt.models import build_model, load_backbone
        cfg, model = run_model({str(run)!r})
        batch = batch_of(model)
        torch.manual_seed(0)
        fresh = build_model(cfg.model, cfg.method).eval()  # step 0: every gain is 0
        plain = load_backbone(cfg.model)[0].eval()
        ours = mmpt_logits(model, batch)
        answer(fresh=(mmpt_logits(fresh, batch) - logits(plain, batch)).abs().max().item(),
               merged=(logits(AutoModelForSeq2SeqLM.from_pretrained({str(merged)!r}), batch) - ours).abs().max().item(),
               trained=(ours - logits(plain, batch)).abs().max().item(), scale=ours.abs().max().item())
    ''')
    assert got["fresh"] == 0.0  # a zero-initialised gain leaves the logits unchanged, bit for bit
    assert got["trained"] > 1e-4  # three steps changed them
    assert got["merged"] <= 1e-5 * max(1.0, got["scale"])  # the merged checkpoint computes what the run did
    (row,) = reported(project, run.parent)
    assert (row["method"], row["task"], int(row["trainable_params"])) == ("gain", "cb", metrics["trainable_params"])
    assert float(row["mean"]) == pytest.approx(100 * metrics["test/acc"])


# -- a router: tests/extensions/router (mmpt/routers/softmax_table.py, conf/router/softmax_table.yaml) --
@pytest.mark.subprocess
def test_a_new_router_trains_exports_and_is_reported(project, tmp_path):
    run = tmp_path / "runs" / "softmax"
    # two steps: the skills' B start at 0, so the routing has a gradient from the second step on
    metrics = train_py(project, run, *T5, *SHORT, "method=poly_lora", "router=softmax_table", "router.temperature=0.5",
                       "method.n_skills=3", "method.rank=2", "optimizer.groups.routing.lr=0.1",
                       "trainer.max_steps=2", "trainer.eval_every=2")
    (logits,) = [v for k, v in weights(run).items() if k.endswith("selectors.all.logits")]
    assert logits.shape == (1, 3) and logits.abs().max() > 0.01  # U(-1e-3, 1e-3) at init; Adam moved it
    merged = export(project, run, "merged")
    got = probe(project, f'''
        from transformers import AutoModelForSeq2SeqLM
        cfg, model = run_model({str(run)!r})
        batch = batch_of(model)
        (selector,) = model.method.selectors.values()
        ours = mmpt_logits(model, batch)
        answer(type=type(selector).__name__, weights=selector(torch.tensor([0]))[0, 0].tolist(),
               merged=(logits(AutoModelForSeq2SeqLM.from_pretrained({str(merged)!r}), batch) - ours).abs().max().item(),
               scale=ours.abs().max().item())
    ''')
    assert got["type"] == "SoftmaxTable"
    assert got["weights"] == pytest.approx((logits[0] / 0.5).softmax(-1).tolist(), abs=1e-6)  # by hand
    sigmoid = torch.sigmoid(logits[0])  # poly's normalised sigmoid: not what ran
    assert not torch.allclose(torch.tensor(got["weights"]), sigmoid / sigmoid.sum(), atol=1e-4)
    assert got["merged"] <= 1e-5 * max(1.0, got["scale"])  # task 0's skills folded in
    (row,) = reported(project, run.parent)
    assert (row["method"], row["task"]) == ("poly_lora", "cb")
    assert float(row["mean"]) == pytest.approx(100 * metrics["test/acc"])


# -- a backbone family: tests/extensions/family (mmpt/models/opt.py, conf/model/opt_tiny.yaml) --
@pytest.mark.subprocess
def test_a_new_backbone_family_trains_exports_reloads_and_is_reported(project, tmp_path):
    runs = tmp_path / "runs"
    ia3 = ["method=ia3", "optimizer.groups.adapters.lr=0.05", *SHORT, "trainer.eval_every=2"]
    metrics = train_py(project, runs / "opt", "model=opt_tiny", *ia3, "trainer.max_steps=2")
    saved = weights(runs / "opt")
    # the family's own targets: keys, values and fc1 of both layers (2 x (32 + 32 + 64) scales)
    assert sorted({k.split(".")[-2] for k in saved}) == ["fc1", "k_proj", "v_proj"]
    assert metrics["trainable_params"] == 256
    assert all((v - 1).abs().max() > 1e-3 for v in saved.values())  # IA3 scales start at 1; they moved
    merged = export(project, runs / "opt", "merged")
    # The merged checkpoint, loaded as any saved OPT: the new family (not the catch-all causal one)
    # takes its config, and its fresh IA3 (identity) scores the test set exactly as the run did.
    again = train_py(project, runs / "reloaded", "model=local", f"model.name_or_path={merged}", *ia3,
                     "trainer.max_steps=0")
    assert again["trainable_params"] == 256
    assert again["test/acc"] == metrics["test/acc"]
    assert (runs / "reloaded" / "predictions" / "test.jsonl").read_text() == \
        (runs / "opt" / "predictions" / "test.jsonl").read_text()
    rows = reported(project, runs)  # two backbones (opt_tiny, the local copy): two rows, one score
    assert [(r["method"], r["task"], int(r["trainable_params"])) for r in rows] == [("ia3", "cb", 256)] * 2
    assert [float(r["mean"]) for r in rows] == [pytest.approx(100 * metrics["test/acc"])] * 2


# -- a fine-tuning type --


# -- a fine-tuning type and a library type (tests/test_library.py's make_run builds their runs) --
LIB_FAST = ["dataset=cb", "dataset.max_length=48", "k_shot=4", "seed=0", "trainer.max_steps=2", "trainer.eval_every=2",
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


def library_report_rows(copy: ProjectCopy, runs: str) -> dict:
    copy.run("-m", "mmpt.report", runs)
    with open(copy.path / runs / "report.csv") as f:
        return {r["label"]: r for r in csv.DictReader(f) if r["metric"] == "acc"}


def run_metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.subprocess
def test_a_new_finetuning_type_is_a_module_and_a_yaml(tmp_path):
    copy = ProjectCopy(tmp_path / "project")
    copy.add("mmpt/recipes/finetune_types/mean_z.py", MEAN_Z)
    copy.add("conf/finetune_type/MeanZ.yaml", MEAN_Z_YAML)
    pre = make_run(copy.path / "pre", "poly_lora", "glue_superglue_mix", "dataset.tasks=[cb,rte]")
    copy.run("finetune.py", f"pretrained={pre}", "finetune_type=MeanZ", "optimizer.groups.routing.lr=0.1", *LIB_FAST,
             "hydra.run.dir=runs/meanz")
    run = copy.path / "runs" / "meanz"
    old, new = load_file(pre / "checkpoints" / "best" / "trainable.safetensors"), \
        load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    assert new and set(new) == {k for k in old if k.endswith(".logits")}  # the new rows train, nothing else
    start = torch.stack([old[k].mean(0) for k in sorted(new)])  # each selector's mean of the 2 tasks' rows
    moved = torch.stack([new[k][-1] for k in sorted(new)])       # the row MeanZ appended (task id 2)
    assert not torch.allclose(moved, start) and torch.allclose(moved, start, atol=0.25)  # two Adam steps of lr 0.1
    m = run_metrics(run)
    assert m["trainable_params"] == sum(v[-1].numel() for v in new.values())
    row = library_report_rows(copy, "runs")["poly_lora/MeanZ"]
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
             "optimizer.groups.routing.lr=0.5", *LIB_FAST, "hydra.run.dir=runs/sw")
    run = copy.path / "runs" / "sw"
    (logits,) = load_file(run / "checkpoints" / "best" / "trainable.safetensors").values()
    m = run_metrics(run)
    assert logits.shape == (2,) and logits.abs().sum() > 0.1 and m["trainable_params"] == 2  # trained from 0
    # the type's effect, its option included: the mixture is softmax(logits / 0.5), as its eval reports
    mix = (logits / 0.5).softmax(-1)
    assert [m["test/experts/cb"], m["test/experts/rte"]] == pytest.approx(mix.tolist(), abs=1e-6)
    assert not torch.allclose(mix, logits.softmax(-1), atol=1e-3)  # temperature 1 would mix otherwise
    row = library_report_rows(copy, "runs")["library/softmax_weighted"]
    assert float(row["mean"]) == pytest.approx(100 * m["test/acc"], abs=1e-9)


# -- a pruner and a storage (real sweeps) --
SWEEP_TINY = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "method=lora", "dataset=cb",
        "dataset.max_length=32", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.eval_batch_size=64",
        "hparams_search=lora", "hydra.sweeper.n_trials=2"]

PRUNER = '''"""Prunes every odd-numbered trial at its first report (a contributor's pruner)."""
import optuna


class OddTrials(optuna.pruners.BasePruner):
    def __init__(self, after_reports: int = 1):
        self.after_reports = after_reports

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and len(trial.intermediate_values) >= self.after_reports
'''

PRESET = '''# Prune the odd-numbered trials at their first report.
_target_: mmpt.pruners.odd_trials.OddTrials  # the pruner class
after_reports: 1            # reports a trial makes before it is pruned
'''

STORAGE = '''"""dirdb:///DIR: a study kept in DIR/study.db, DIR made when missing (a contributor's storage)."""
import os
from pathlib import Path

from mmpt.storage.base import STORAGES
from mmpt.storage.sqlite import SQLite


def _file(url: str) -> str:
    folder = Path(url[len("dirdb:///"):])
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / "study.db")


@STORAGES.register("dirdb")
class DirDB(SQLite):
    example = "dirdb:///DIR"

    def open(self, url, heartbeat):
        return super().open(f"sqlite:///{_file(url)}", heartbeat)

    def identity(self, url, base):
        return ("dirdb", os.path.realpath(base / url[len("dirdb:///"):]))
'''


def sweep_report(proj: ProjectCopy, sweep) -> str:
    proj.run("-m", "mmpt.report", str(sweep))
    return (sweep / "report.md").read_text()


@pytest.mark.subprocess
@pytest.mark.sweep
def test_a_new_pruner_is_a_module_and_a_preset_and_prunes_a_real_sweep(tmp_path):
    proj = ProjectCopy(tmp_path / "proj")
    proj.add("mmpt/pruners/odd_trials.py", PRUNER)
    proj.add("conf/hydra/sweeper/pruner/odd_trials.yaml", PRESET)
    sweep = tmp_path / "sweep"
    proj.run("train.py", "-m", *SWEEP_TINY, "hydra/sweeper/pruner=odd_trials", f"hydra.sweep.dir={sweep}")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"COMPLETE": 1, "PRUNED": 1}
    done, pruned = (json.loads((sweep / str(n) / "metrics.json").read_text()) for n in (0, 1))
    assert "pruned" not in done and "test/acc" in done  # trial 0 trained its 4 steps and was tested
    assert pruned["pruned"] is True and pruned["pruned_step"] == 2 and "test/acc" not in pruned  # at its first eval
    md = sweep_report(proj, sweep)
    assert "1 finished runs" in md and "1 pruned trials listed apart" in md
    assert "| 1 | lora | cb (val/acc) | 2 |" in md.split("## Pruned trials")[1]


@pytest.mark.subprocess
@pytest.mark.sweep
def test_a_new_storage_is_one_module_and_holds_a_real_sweeps_study(tmp_path):
    proj = ProjectCopy(tmp_path / "proj")
    proj.add("mmpt/storage/dirdb.py", STORAGE)
    sweep, where = tmp_path / "sweep", tmp_path / "studies" / "lora"
    out = proj.run("train.py", "-m", *SWEEP_TINY, f"hydra.sweeper.storage=dirdb:///{where}", "hydra.sweeper.study_name=s",
                   f"hydra.sweep.dir={sweep}")
    assert f"Optuna study s (dirdb:///{where})" in out.stdout + out.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{where / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:  # each trial's value is its run's val score, its folder named by its number
        metrics = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["val/acc"])
    with sqlite3.connect(where / "study.db") as db:  # Optuna's heartbeat, as for any SQLite study
        assert db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0] == 2
    # a second worker on the same storage resumes the study: trial folders 2 and 3, none overwritten
    proj.run("train.py", "-m", *SWEEP_TINY, f"hydra.sweeper.storage=dirdb:///{where}", "hydra.sweeper.study_name=s",
             f"hydra.sweep.dir={sweep}")
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{where / 'study.db'}").trials) == 4
    md = sweep_report(proj, sweep)
    assert "4 finished runs" in md
