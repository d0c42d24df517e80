"""Optuna sweeps (SQLite resume, failed trials). The report's tests: tests/test_report.py."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import DATA, ROOT

pytestmark = [pytest.mark.subprocess, pytest.mark.sweep]


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
    study.ask()  # trial 2: what a sweep killed mid-trial leaves behind (RUNNING, no longer stamped)
    # Other workers may share a study, so only a trial unstamped for the heartbeat's grace period
    # is a killed worker's: 1 s here. It becomes FAIL and is queued again (trial 3).
    time.sleep(1.5)
    second = sweep(out, db, 2, *args, "hydra.sweeper.heartbeat.grace_period=1", preset="lora", method="lora")
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
