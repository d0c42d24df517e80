"""What a run reports: W&B names, tags, groups and keys; generate-mode outputs; the final
evaluation reusing the best eval's val scores; a short on-screen summary."""
import json
import logging
import sys
import types
import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import mmpt.recipes.common as experiment
from conftest import ROOT, compose_cfg, make_model, toy_batch
from mmpt.data.mixture import num_tasks
from mmpt.engine import checkpoint
from mmpt.engine.evaluate import evaluate
from mmpt import settings
from mmpt.cli_context import run_context
from mmpt.engine.logging import run_name
from mmpt.settings import EvaluationSettings
from mmpt.engine.meta import RunMeta
from mmpt.data.mixture import tasks_of as head_tasks
from mmpt.recipes import train
from mmpt.recipes.common import final_eval, load_data
from mmpt.models import build_model

ROUTED = ["model=t5_tiny", "method=prefix_routing", "dataset=cb", "dataset.max_length=32",
          "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=4", "trainer.eval_batch_size=64"]


class FakeRun:
    """Records what mmpt sends to W&B."""

    def __init__(self, **init):
        self.init, self.history, self.summary = init, [], {}

    def log(self, values, step=None):
        self.history.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kw):
        runs.append(FakeRun(**kw))
        return runs[-1]

    module = types.SimpleNamespace(init=init, Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_run_is_named_tagged_and_uses_one_name_per_metric(tmp_path, fake_wandb):
    cfg = compose_cfg([*ROUTED, "logger=wandb", "logger.mode=offline", "logger.tags=[mine]"], run_dir=tmp_path)
    metrics = train(cfg)
    (run,) = fake_wandb
    assert run.init["name"] == "prefix_routing-cb-s42"
    assert run.init["tags"] == ["prefix_routing", "cb", "t5_tiny", "mine"]
    assert run.finished and run.summary == metrics
    history = {k for _, values in run.history for k in values}
    # every val/test metric of the summary has a history under the same name (test scores included)
    scored = {k for k in metrics if k.startswith(("val/", "test/"))}
    assert scored and scored <= history, sorted(scored - history)
    assert {"val/router/entropy", "val/mask/gate_mean_encoder.0", "test/acc", "test/router/max_load"} <= history
    assert not any(k.startswith(("router/", "mask/")) for k in history)
    # test scores sit at the last step logged, after every eval (W&B drops steps that go back)
    steps = [s for s, _ in run.history]
    assert steps == sorted(steps)
    (final_step, final), = [(s, v) for s, v in run.history if "test/acc" in v]
    assert final_step == 4 and final["test/acc"] == metrics["test/acc"]


def hydra_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.fixture
def multirun():
    """Installs a composed config as the running Hydra job's (as a sweep trial sees it)."""
    def install(overrides):
        cfg = hydra_cfg(["hydra.mode=MULTIRUN", "hydra.runtime.output_dir=job", *overrides])
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield install
    HydraConfig.instance().cfg = None


def test_a_resumed_study_keeps_its_wandb_group(multirun):
    stored = ["hparams_search=lora", "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.study_name=s"]
    multirun([*stored, "hydra.sweep.dir=multirun/first", "hydra.job.num=0"])
    first = run_context().wandb_group  # the entry point reads the sweep's identity once, at the door
    multirun([*stored, "hydra.sweep.dir=multirun/resumed", "hydra.job.num=3"])
    assert run_context().wandb_group == first == "s"
    cfg = multirun(["hparams_search=lora", "method=lora", "hydra.sweep.dir=multirun/2026-01-01_10-00-00",
                    "hydra.job.num=3"])
    # a study without storage cannot be resumed: each sweep is its own group
    ctx = run_context()
    assert ctx.wandb_group == "lora-2026-01-01_10-00-00" and ctx.sweep and ctx.trial is None
    assert run_name(RunMeta(cfg.method.name, "t5_base", cfg.dataset.name, cfg.seed), ctx.job_index) == "lora-rte-s42-t3"
    # what the run logs to W&B under it: the group and name the run context gives, the logger's own first
    wb = settings.wandb(compose_cfg(["logger=wandb"]), ctx)
    assert (wb.group, wb.job_index, wb.name) == ("lora-2026-01-01_10-00-00", 3, None)
    wb = settings.wandb(compose_cfg(["logger=wandb", "logger.group=mine", "logger.name_run=x"]), ctx)
    assert (wb.group, wb.name) == ("mine", "x") and "logger" not in wb.config
    assert settings.wandb(compose_cfg([]), ctx) is None  # logger=local


class TwoChoiceTask:
    name, main_metric, verbalizers = "toy", "acc", ["yes", "no"]

    def metrics(self, pred, examples):
        return {"acc": sum(p == ex.label for p, ex in zip(pred, examples)) / len(pred)}


def test_generate_mode_saves_the_decoded_text_of_every_output():
    model = make_model("prefix")
    tok = model.tokenizer
    batch = toy_batch(tok, texts=("a", "b", "c"), labels=(0, 1, 0))
    # decoded: a label, a non-label, and a label in other case and spacing (normalised before matching)
    outputs = ["yes", "maybe so", " NO "]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in outputs]
    width = max(map(len, ids))
    model.generate = lambda b, n: (torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids]), {})
    examples = [types.SimpleNamespace(id=str(i), label=label) for i, label in enumerate((0, 1, 0))]
    metrics, rows, _ = evaluate(model, [batch], examples, TwoChoiceTask(), EvaluationSettings("generate", 10, "fp32", 0, True))
    assert [r["prediction"] for r in rows] == ["yes", None, "no"]
    assert [r["output"] for r in rows] == ["yes", "maybe so", "no"]
    assert metrics == {"acc": pytest.approx(1 / 3), "invalid_rate": pytest.approx(1 / 3)}
    _, rows, _ = evaluate(model, [batch], examples, TwoChoiceTask(), EvaluationSettings("rank", 10, "fp32", 0, True))
    assert set(rows[0]) == {"id", "prediction", "label"}  # rank mode decodes nothing


def test_greedy_generation_raises_no_deprecation_warning():
    model = make_model("prefix")
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(toy_batch(model.tokenizer), max_new_tokens=3)
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]


def test_final_eval_reuses_the_best_evals_val_scores_and_they_equal_a_rescoring(tmp_path, monkeypatch, caplog):
    calls = []
    real = experiment.evaluate
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    caplog.set_level(logging.INFO, logger="mmpt")
    cfg = compose_cfg(ROUTED, run_dir=tmp_path / "run")
    metrics = train(cfg)
    assert calls == [56], "the final evaluation scores test (56 CB examples) only, not val again"
    # on screen: task metrics and a few routing numbers; the per-route / per-site stats are in files
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final:")]
    assert len(line) < 500 and "test/acc=" in line and "val/router/max_load=" in line
    assert "load_0" not in line and "gate_mean_encoder" not in line
    assert "val/router/load_0" in metrics and "test/mask/gate_mean_decoder.1" in metrics

    # score the best weights again from scratch, in a fresh model
    torch.manual_seed(123)  # any init: the checkpoint overwrites every trainable parameter
    model = build_model(cfg.model, cfg.method, cfg.router, n_tasks=num_tasks(cfg.dataset), tasks=head_tasks(cfg.dataset))
    checkpoint.load_weights(tmp_path / "run" / "checkpoints" / "best", model)
    (tmp_path / "again").mkdir()
    again = final_eval(model, load_data(cfg, model.tokenizer, cfg.seed), settings.evaluation(cfg.trainer),
                       tmp_path / "again")
    val = {k: v for k, v in again.items() if k.startswith("val/")}
    assert val == {k: v for k, v in metrics.items() if k.startswith("val/")}  # exactly, not approximately
    for split in ("val", "test"):
        assert (tmp_path / "run" / "predictions" / f"{split}.jsonl").read_text() == \
               (tmp_path / "again" / "predictions" / f"{split}.jsonl").read_text()
    # the kept scores are those of the eval that chose the checkpoint (logged at best_step)
    evals = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in l]
    (chosen,) = [e for e in evals if e["step"] == metrics["best_step"]]
    assert {k: chosen[k] for k in val} == val


def test_a_finetune_run_is_named_by_its_type_and_tagged_with_the_backbone(tmp_path, fake_wandb):
    from mmpt.recipes import finetune
    from test_finetune import pretrained_run
    pretrained_run(tmp_path / "pre")
    cfg = compose_cfg([f"pretrained={tmp_path / 'pre'}", "dataset=cb", "k_shot=8", "seed=3", "finetune_type=Z",
                       "trainer.max_steps=1", "trainer.batch_size=4", "trainer.eval_batch_size=64", "dataset.max_length=64",
                       "logger=wandb", "logger.mode=offline"],
                      config_name="finetune", run_dir=tmp_path / "ft")
    finetune(cfg)
    (run,) = fake_wandb
    assert run.init["name"] == "finetune_Z-cb-s3"
    assert run.init["tags"] == ["finetune_Z", "cb", "t5_tiny"]
