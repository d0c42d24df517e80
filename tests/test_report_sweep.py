"""Optuna sweeps (SQLite resume, failed trials). The report's tests: tests/test_report.py."""
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml

from conftest import DATA, ROOT


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
