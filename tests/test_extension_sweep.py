"""A pruner and a storage added the way a contributor adds them, and nothing else edited: in a copy
of the project (tests/extension_kit.py), a new pruner is a module and its preset
(conf/hydra/sweeper/pruner/<name>.yaml), a new storage kind is one module in mmpt/storage/. Each
runs through a real sweep (train.py -m, tiny model, two trials) and the report.
(To be merged into tests/test_extension_points.py.)"""
import json
import sqlite3

import optuna
import pytest
import yaml

from extension_kit import ProjectCopy

TINY = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "method=lora", "dataset=cb",
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


def report_rows(proj: ProjectCopy, sweep) -> str:
    proj.run("-m", "mmpt.report", str(sweep))
    return (sweep / "report.md").read_text()


@pytest.mark.subprocess
@pytest.mark.sweep
def test_a_new_pruner_is_a_module_and_a_preset_and_prunes_a_real_sweep(tmp_path):
    proj = ProjectCopy(tmp_path / "proj")
    proj.add("mmpt/pruners/odd_trials.py", PRUNER)
    proj.add("conf/hydra/sweeper/pruner/odd_trials.yaml", PRESET)
    sweep = tmp_path / "sweep"
    proj.run("train.py", "-m", *TINY, "hydra/sweeper/pruner=odd_trials", f"hydra.sweep.dir={sweep}")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"COMPLETE": 1, "PRUNED": 1}
    done, pruned = (json.loads((sweep / str(n) / "metrics.json").read_text()) for n in (0, 1))
    assert "pruned" not in done and "test/acc" in done  # trial 0 trained its 4 steps and was tested
    assert pruned["pruned"] is True and pruned["pruned_step"] == 2 and "test/acc" not in pruned  # at its first eval
    md = report_rows(proj, sweep)
    assert "1 finished runs" in md and "1 pruned trials listed apart" in md
    assert "| 1 | lora | cb (val/acc) | 2 |" in md.split("## Pruned trials")[1]


@pytest.mark.subprocess
@pytest.mark.sweep
def test_a_new_storage_is_one_module_and_holds_a_real_sweeps_study(tmp_path):
    proj = ProjectCopy(tmp_path / "proj")
    proj.add("mmpt/storage/dirdb.py", STORAGE)
    sweep, where = tmp_path / "sweep", tmp_path / "studies" / "lora"
    out = proj.run("train.py", "-m", *TINY, f"hydra.sweeper.storage=dirdb:///{where}", "hydra.sweeper.study_name=s",
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
    proj.run("train.py", "-m", *TINY, f"hydra.sweeper.storage=dirdb:///{where}", "hydra.sweeper.study_name=s",
             f"hydra.sweep.dir={sweep}")
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{where / 'study.db'}").trials) == 4
    md = report_rows(proj, sweep)
    assert "4 finished runs" in md
