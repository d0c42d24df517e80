"""The extension points, used the way a contributor uses them: each kind is added through its public
route only (a new module in its room and, where the kind has one, a YAML in conf/) to a throw-away
copy of the project (tests/extension_kit.py), which then runs the user's commands: train.py, the
export and the report. If a new kind only worked after another file was edited (an import list, a
table of names, a schema), its run would fail here. The contributor's files are in
tests/extensions/<kind>/, at the paths they take in the project.

Shared fixtures and helpers first, then one section per kind: a method, a router, a backbone family
(each `subprocess`: real commands in the copy), then the in-process fine-tuning type and library
type tests.
"""
import csv
import json
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from conftest import compose_cfg
from extension_kit import ProjectCopy
from mmpt.library.extract import build
from mmpt.library.methods import Weighted
from mmpt.library.types import LIBRARY_TYPES
from mmpt.recipes import finetune, train
from mmpt.recipes.transfer import FINETUNE_TYPES, FinetuneType

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


@pytest.fixture
def registered():
    """register(registry, name, config=..., **extra)(obj), unregistered after the test (the
    in-process tests at the bottom)."""
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


def pretrain(path, *over):
    """A finished train.py run in `path` (in this process), its config saved as the CLI saves it."""
    cfg = compose_cfg([*T5, *SHORT, "trainer.max_steps=1", *over], run_dir=path)
    metrics = train(cfg)
    (path / ".hydra").mkdir()
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    return metrics


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
