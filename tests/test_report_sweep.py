"""Report aggregation (hand-computed numbers) and Optuna sweeps (SQLite resume, failed trials)."""
import json
import os
import subprocess
import sys
from pathlib import Path

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


def multirun(script, *args):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def sweep(tmp_path, db, n, *extra, preset="prefix", method="prefix"):
    return multirun("train.py", "model=t5_tiny", f"method={method}", "dataset=cb", "trainer.max_steps=2",
                    "trainer.eval_every=2", "dataset.max_length=32", f"hparams_search={preset}",
                    f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path}",
                    *extra)


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


def trial_folders(sweep_dir: Path) -> dict:
    """{trial folder number: its swept overrides (key -> value string)} for folders with metrics.json."""
    out = {}
    for metrics in sweep_dir.glob("*/metrics.json"):
        overrides = yaml.safe_load((metrics.parent / ".hydra" / "overrides.yaml").read_text())
        out[int(metrics.parent.name)] = dict(o.split("=", 1) for o in overrides)
    return out


def test_resumed_study_draws_new_points_fails_killed_trials_and_keeps_every_folder(tmp_path):
    db, out = tmp_path / "study.db", tmp_path / "sweep"
    args = ("hydra.sweeper.study_name=s",)
    first = sweep(out, db, 2, *args, preset="lora", method="lora")
    assert first.returncode == 0, first.stderr[-1500:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    study.ask()  # trial 2: what a sweep killed mid-trial leaves behind (RUNNING)
    second = sweep(out, db, 2, *args, preset="lora", method="lora")
    assert second.returncode == 0, second.stderr[-1500:]
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    points = [json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(points)) == 4  # the resumed sampler did not restart its sequence
    # trial n ran in folder n/: the first round's folders kept their parameters
    folders = trial_folders(out)
    assert sorted(folders) == [0, 1, 3, 4]
    for n, overrides in folders.items():
        assert float(overrides["optimizer.groups.adapters.lr"]) == trials[n].params["optimizer.groups.adapters.lr"]
        assert int(overrides["method.rank"]) == trials[n].params["method.rank"]
    # another study into the same sweep dir would overwrite trial folders: it stops first
    other = sweep(out, db, 1, "hydra.sweeper.study_name=other", preset="lora", method="lora")
    assert other.returncode != 0 and "hydra.sweep.dir" in other.stderr and "already holds" in other.stderr
    assert [st.study_name for st in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["s"]  # nothing asked


def test_prefix_routing_search_preset_runs(tmp_path):
    """(The prefix and lora presets run in the tests above, mttl_finetune in the one below.)"""
    proc = sweep(tmp_path / "sweep", tmp_path / "study.db", 1, preset="prefix_routing", method="prefix_routing")
    assert proc.returncode == 0, proc.stderr[-1500:]
    (params,) = trial_folders(tmp_path / "sweep").values()
    searched = yaml.safe_load((ROOT / "conf" / "hparams_search" / "prefix_routing.yaml").read_text())
    assert set(params) >= set(searched["hydra"]["sweeper"]["params"])  # the trial got every searched lr


def test_mttl_grid_preset_runs_each_point_once_and_a_finished_grid_runs_nothing(tmp_path):
    from test_finetune import pretrained_run

    pretrained_run(tmp_path / "pre")
    args = ("hparams_search=mttl_finetune", f"pretrained={tmp_path / 'pre'}", "dataset=cb", "k_shot=8",
            "mean_over_seeds=[0]", "trainer.max_steps=1", "dataset.max_length=32",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'grid.db'}", f"hydra.sweep.dir={tmp_path / 'grid'}")
    proc = multirun("finetune.py", *args)
    assert proc.returncode == 0, proc.stderr[-1500:]
    trials = optuna.load_study(study_name="mttl_finetune", storage=f"sqlite:///{tmp_path / 'grid.db'}").trials
    grid = {(t.params["optimizer.groups.adapters.lr"], t.params["optimizer.groups.routing.lr"]) for t in trials}
    assert grid == {(1e-3, 0.5), (1e-3, 0.1), (1e-4, 0.5), (1e-4, 0.1)} and len(trials) == 4
    assert all(t.state.name == "COMPLETE" for t in trials) and len(trial_folders(tmp_path / "grid")) == 4
    again = multirun("finetune.py", *args)
    assert again.returncode == 0, again.stderr[-1500:]
    assert len(optuna.load_study(study_name="mttl_finetune", storage=f"sqlite:///{tmp_path / 'grid.db'}").trials) == 4
