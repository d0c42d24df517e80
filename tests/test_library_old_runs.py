"""finetune.py run folders written before conf/finetune_type/ (tests/fixtures/finetune_runs_bfc366a,
made by its make_*.sh at commit bfc366a: one flat 11-key `experts` block, finetune_type a plain
key) still rebuild to their own predictions (mmpt.evaluate's route, recipes/rebuild.py), report
their metrics, and resume: each library type reads its own keys of the old block, ignoring the
other types'."""
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import DATA, ROOT, compose_cfg
from evaluate_helpers import mmpt_scores
from mmpt.data import get_task
from mmpt.recipes.rebuild import load_finetuned
from mmpt.report.__main__ import main as report
from mmpt.runs import config_changes

FIXTURE = ROOT / "tests" / "fixtures" / "finetune_runs_bfc366a"
RUNS = ["arrow", "dare_ties", "weighted", "poly"]
CB = get_task("cb").verbalizers


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A copy of the fixture; its configs name the library and the pretrained run relative to it."""
    root = tmp_path_factory.mktemp("old") / "runs_bfc366a"
    shutil.copytree(FIXTURE, root)
    return root


def config_of(run, **experts):
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.data_dir = str(DATA)
        for key, value in experts.items():
            OmegaConf.update(cfg, f"experts.{key}", value)
    return cfg


def rebuilt_scores(run, **experts):
    cfg = config_of(run, **experts)
    model, task_id, _ = load_finetuned(run, cfg)
    with torch.no_grad():
        return model.eval(), mmpt_scores(model, "cb", 56, task_id, cfg.dataset.max_length)


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_rebuilds_to_its_own_test_predictions(old, monkeypatch, name):
    monkeypatch.chdir(old)  # library=lib, pretrained=pre: relative, as the runs were made
    run = old / "runs" / name
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert "route_topk" in cfg.experts and cfg.finetune_type  # the old format: every type's keys
    _, scores = rebuilt_scores(run)
    preds = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert [CB[i] for i in scores.argmax(-1).tolist()] == [p["prediction"] for p in preds]
    acc = sum(p["prediction"] == p["label"] for p in preds) / len(preds)
    assert acc == pytest.approx(json.loads((run / "metrics.json").read_text())["test/acc"], abs=1e-12)


@pytest.mark.parametrize("name, key, value", [("arrow", "top_k", 2), ("dare_ties", "density", 0.2)])
def test_the_rebuild_reads_the_old_runs_own_options(old, monkeypatch, name, key, value):
    """The run's experts.top_k=1 / density=0.5 are what the rebuild uses: their YAML defaults
    (top_k 4 with 2 experts, density 0.2) give other scores."""
    monkeypatch.chdir(old)
    _, own = rebuilt_scores(old / "runs" / name)
    _, other = rebuilt_scores(old / "runs" / name, **{key: value})
    assert (own - other).abs().max() > 1e-4


def test_an_old_arrow_run_ignores_the_other_types_keys(old, monkeypatch):
    monkeypatch.chdir(old)
    model, _ = rebuilt_scores(old / "runs" / "arrow", density=0.9, route_topk=7)  # not arrow's: no effect
    assert model.method.cfg.top_k == 1 and "density" not in model.method.cfg


def test_old_runs_report_their_metrics(old, tmp_path, monkeypatch):
    monkeypatch.chdir(old)  # the Poly run's `pretrained: pre` is relative to where the runs were made
    assert report([str(old / "runs"), "--out", str(tmp_path)]) == 0
    rows = {r["label"]: r for r in _csv(tmp_path / "report.csv") if r["metric"] == "acc"}
    assert set(rows) == {"library/arrow", "library/dare_ties", "library/weighted", "poly_lora/Poly"}
    for name, label in zip(RUNS, ["library/arrow", "library/dare_ties", "library/weighted", "poly_lora/Poly"]):
        want = json.loads((old / "runs" / name / "metrics.json").read_text())["test/acc"] * 100
        assert float(rows[label]["mean"]) == pytest.approx(want, abs=1e-9)


def _csv(path):
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_resumes_with_its_command_composed_today(old, name):
    """resume=true continues a run whose config equals the saved one (run-control keys aside): the
    run's own command (.hydra/overrides.yaml) composed today matches its old config, the flat
    experts block included."""
    run = old / "runs" / name
    command = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    assert any(c.startswith("finetune_type=") for c in command)
    today = compose_cfg([*command, "resume=true"], config_name="finetune", run_dir=run)
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config_changes(saved, today) == []
    other = compose_cfg([*command, "seed=1"], config_name="finetune", run_dir=run)
    assert config_changes(saved, other) == ["seed: 0 -> 1"]  # a real change is still seen
