"""Report aggregation (hand-computed numbers) and Optuna sweeps (SQLite resume, failed trials)."""
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml

from conftest import DATA, ROOT
from mmpt.report.__main__ import main as report_main
from mmpt.report.aggregate import collect, table


def fake_run(d, method, task, seed, score, params=100, key="val/acc"):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"method": {"name": method}, "dataset": {"name": task}, "seed": seed}))
    test_key = "test/" + key.split("/", 1)[1]
    (d / "metrics.json").write_text(json.dumps({key: 0.5, test_key: score, "optimized_metric_key": key,
                                                "trainable_params": params}))


def test_report_means_stds_average_and_incomplete_runs(tmp_path, capsys):
    for i, (seed, s) in enumerate([(0, 0.70), (1, 0.80), (2, 0.90)]):
        fake_run(tmp_path / f"a{i}", "lora", "rte", seed, s, params=1000)
    fake_run(tmp_path / "b0", "lora", "cb", 0, 0.50, params=1000)
    fake_run(tmp_path / "c0", "prefix", "rte", 0, 0.60, params=20)
    fake_run(tmp_path / "m0", "prefix", "multirc", 0, 0.40, params=20, key="val/f1a")  # main metric f1a
    (tmp_path / "dead" / ".hydra").mkdir(parents=True)
    (tmp_path / "dead" / ".hydra" / "config.yaml").write_text("method: {name: lora}\n")
    runs, incomplete = collect(tmp_path)
    assert len(runs) == 6 and incomplete == 1
    t = table(runs)
    # lora on rte: mean 80.0, population std sqrt(((-10)^2 + 0 + 10^2) / 3) = 8.165
    assert t.loc["lora", "rte"] == "80.0 ± 8.2 (3)"
    assert t.loc["lora", "average"] == "65.0"  # (80 + 50) / 2
    assert t.loc["prefix", "multirc"] == "40.0 ± 0.0 (1)" and t.loc["prefix", "cb"] == "-"
    assert t.loc["prefix", "trainable params"] == "20"
    assert report_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lora" in out and "1 incomplete runs ignored" in out
    for f in ("report.md", "report.csv", "report.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_seed_subruns_count_once_each(tmp_path):
    parent = tmp_path / "trial"
    fake_run(parent, "lora", "rte", 0, 0.5)
    for seed, s in ((0, 0.6), (1, 0.8)):
        (parent / f"seed_{seed}").mkdir()
        (parent / f"seed_{seed}" / "metrics.json").write_text(json.dumps(
            {"val/acc": 0.5, "test/acc": s, "optimized_metric_key": "val/acc", "trainable_params": 10}))
    runs, _ = collect(tmp_path)
    assert sorted(runs["seed"]) == [0, 1] and runs["score"].mean() == pytest.approx(0.7)


def test_finetune_runs_are_named_by_the_pretrained_method_and_type(tmp_path):
    fake_run(tmp_path / "pre", "poly_lora", "glue_mix", 0, 0.5)
    ft = tmp_path / "ft"
    fake_run(ft, "unused", "rte", 1, 0.6)
    (ft / ".hydra" / "config.yaml").write_text(yaml.safe_dump(  # finetune.yaml has no method group
        {"pretrained": str(tmp_path / "pre"), "finetune_type": "Z", "dataset": {"name": "rte"}, "seed": 1}))
    runs, _ = collect(ft)
    assert runs.loc[0, "method"] == "poly_lora/Z" and runs.loc[0, "seed"] == 1


def sweep(tmp_path, db, n, *extra):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "train.py", "-m", "model=t5_tiny", "method=prefix", "dataset=cb", "trainer.max_steps=2",
           "trainer.eval_every=2", "dataset.max_length=32", "hparams_search=prefix", f"hydra.sweeper.n_trials={n}",
           f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_sweep_resumes_from_sqlite_and_survives_failed_trials(tmp_path):
    db = tmp_path / "study.db"
    first = sweep(tmp_path / "s1", db, 2)
    assert first.returncode == 0, first.stderr[-1500:]
    assert (tmp_path / "s1" / "optimization_results.yaml").exists()
    # the same study continues; a search space where some trials fail (unknown eval mode)
    second = sweep(tmp_path / "s2", db, 3, "trainer.eval_mode=choice(rank,beam)")
    assert second.returncode == 0, second.stderr[-1500:]
    study = optuna.load_study(study_name="prefix", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert len(states) == 5
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2
    n_beam = sum(t.params.get("trainer.eval_mode") == "beam" for t in study.trials)
    assert states.count(optuna.trial.TrialState.FAIL) == n_beam
