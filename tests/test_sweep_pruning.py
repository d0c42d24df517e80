"""Pruning: the training loop's on_eval hook, pruned train.py trials (metrics.json, PRUNED in the
study), mean_over_seeds trials pruned between seeds, the report keeping pruned trials apart, and
optuna-dashboard serving a study."""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from conftest import compose_cfg
from test_report import cfg as run_cfg, fake_run
from test_report_sweep import multirun
from mmpt.recipes import train
from mmpt.report.__main__ import main as report_main

pytestmark = pytest.mark.sweep


def test_on_eval_stops_training_at_the_evaluation_that_says_so(tmp_path, monkeypatch):
    seen = []

    def on_eval(step, metrics):
        seen.append((step, sorted(metrics)))
        return step == 4

    monkeypatch.setattr("mmpt.recipes.common.trial.eval_callback", lambda cfg, key, out: on_eval)
    cfg = compose_cfg(["model=t5_tiny", "method=lora", "dataset=cb", "trainer.max_steps=20", "trainer.eval_every=2",
                       "trainer.log_every=1", "dataset.max_length=32"], run_dir=tmp_path)
    metrics = train(cfg)
    assert [s for s, _ in seen] == [2, 4] and {"val/acc", "val/f1"} <= set(seen[0][1])
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert max(steps) == 4  # nothing trained after the pruned evaluation
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics and saved["pruned"] is True and saved["pruned_step"] == 4
    assert "val/acc" in saved and not any(k.startswith("test/") for k in saved)  # no test scores for it
    assert not (tmp_path / "predictions" / "test.jsonl").exists()


@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory):
    """A train.py sweep whose threshold no trial reaches: every trial pruned at its first eval."""
    tmp = tmp_path_factory.mktemp("pruned")
    proc = multirun("train.py", "model=t5_tiny", "method=lora", "dataset=cb", "hparams_search=lora",
                    "trainer.max_steps=40", "trainer.eval_every=5", "dataset.max_length=32", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.study_name=pr", f"hydra.sweeper.storage=sqlite:///{tmp / 'pr.db'}",
                    "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1000", f"hydra.sweep.dir={tmp / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp


@pytest.mark.subprocess
def test_a_pruned_trial_stops_at_its_evaluation_writes_pruned_and_is_pruned_in_the_study(pruned_sweep):
    study = optuna.load_study(study_name="pr", storage=f"sqlite:///{pruned_sweep / 'pr.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    for t in study.trials:
        assert list(t.intermediate_values) == [5]  # the val accuracy of its first evaluation, at its step
        run = pruned_sweep / "sweep" / str(t.number)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["pruned"] is True and metrics["pruned_step"] == 5
        assert metrics["val/acc"] == pytest.approx(t.intermediate_values[5])
        assert max(json.loads(line)["step"] for line in open(run / "metrics.jsonl")) == 5


@pytest.mark.subprocess
def test_optuna_dashboard_serves_the_study_with_states_and_intermediate_values(pruned_sweep):
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(dashboard), "--host", "127.0.0.1", "--port", str(port),
                               f"sqlite:///{pruned_sweep / 'pr.db'}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        studies, deadline = None, time.time() + 60
        while studies is None and time.time() < deadline and server.poll() is None:
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5))
            except OSError:
                time.sleep(0.5)
        assert studies is not None, f"no answer from the dashboard: {server.stderr.read1().decode()[-500:] if server.poll() else ''}"
        (study,) = [s for s in studies["study_summaries"] if s["study_name"] == "pr"]
        detail = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0",
                                                  timeout=10))
        trials = sorted(detail["trials"], key=lambda t: t["number"])
        assert [(t["number"], t["state"]) for t in trials] == [(0, "Pruned"), (1, "Pruned")]
        assert all([v["step"] for v in t["intermediate_values"]] == [5] for t in trials)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.subprocess
def test_a_mean_over_seeds_trial_is_pruned_before_its_remaining_seeds(tmp_path):
    proc = multirun("train.py", "model=t5_tiny", "method=lora", "dataset=cb", "hparams_search=lora",
                    "trainer.max_steps=2", "trainer.eval_every=1", "dataset.max_length=32", "mean_over_seeds=[0,1,2]",
                    "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=ms", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'ms.db'}",
                    "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1000", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (t,) = optuna.load_study(study_name="ms", storage=f"sqlite:///{tmp_path / 'ms.db'}").trials
    run = tmp_path / "sweep" / "0"
    seed0 = json.loads((run / "seed_0" / "metrics.json").read_text())
    # step 1 = one seed finished; its mean is that seed's val (no per-evaluation reports from inside a seed)
    assert t.state.name == "PRUNED" and t.intermediate_values == {1: pytest.approx(seed0["val/acc"])}
    assert "pruned" not in seed0 and not (run / "seed_1").exists() and not (run / "seed_2").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruned"] is True and metrics["pruned_step"] == 1 and metrics["seeds"] == [0]


def test_the_report_lists_pruned_trials_apart_and_never_averages_them(tmp_path, capsys):
    hydra = {"mode": "MULTIRUN", "sweeper": {"_target_": "hydra_plugins.x.ResumableOptunaSweeper", "study_name": "s"}}
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", run_cfg(seed=0, optimizer__lr=1e-3), 0.6, hydra=hydra)
    fake_run(sweep / "1", run_cfg(seed=0, optimizer__lr=1e-3), 0.2, hydra=hydra)  # same settings, pruned
    (sweep / "1" / "metrics.json").write_text(json.dumps({"pruned": True, "pruned_step": 5, "val/acc": 0.1,
                                                          "optimized_metric_key": "val/acc"}))
    fake_run(sweep / "2", run_cfg(seed=0, optimizer__lr=1e-4, mean_over_seeds=[0, 1]), 0.3, hydra=hydra)
    (sweep / "2" / "metrics.json").unlink()  # a mean_over_seeds trial pruned after its first seed
    (sweep / "2" / "seed_0").mkdir()
    (sweep / "2" / "seed_0" / "metrics.json").write_text(json.dumps({"val/acc": 0.25, "test/acc": 0.3,
                                                                     "optimized_metric_key": "val/acc"}))
    (sweep / "2" / "metrics.json").write_text(json.dumps({"pruned": True, "pruned_step": 1, "val/acc": 0.25,
                                                          "optimized_metric_key": "val/acc", "seeds": [0]}))
    assert report_main([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    trials, pruned = md.split("## Search trials")[1].split("## Pruned trials")
    # trial 0 alone (n = 1: not pooled with trial 1's equal settings); trial 2's finished seed is not a row
    assert trials.count("| lora") == 1 and "| lora | rte (acc) | 1 | 60.0 | 50.0 |" in trials
    assert "| 1 | s | rte (val/acc) | 5 | 10.0 |" in pruned  # the study's name, no "(.)" caption
    assert "| 2 | s | rte (val/acc) | 1 | 25.0 |" in pruned and "(.)" not in md
    assert "1 finished runs" in md and "2 pruned trials listed apart" in md
    assert len(__import__("pandas").read_csv(sweep / "report.csv")) == 1
