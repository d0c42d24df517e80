"""Shared studies: several sweep processes (workers) on one storage, with the toy app (tests/sweep_toy).
train.py's shared studies: ../shared/checks/sweeps-cluster.sh and tests/test_sweep_postgres.py."""
import json
import os
import shutil
import signal
import sqlite3
import time

import pytest

from sweep_toy import jobs, run, start, trials, workers

pytestmark = [pytest.mark.subprocess, pytest.mark.sweep]


def urls(tmp_path):
    return {"sqlite": f"sqlite:///{tmp_path / 'study.db'}", "journal": f"journal:///{tmp_path / 'study.log'}"}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_share_a_study_each_trial_once_in_its_own_folder(tmp_path, kind):
    url = urls(tmp_path)[kind]
    outs = workers(3, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=s", "hydra.sweeper.n_trials=4",
                   "sleep=0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    done = trials(url, "s")
    assert [t.number for t in done] == list(range(12)) and all(t.state.name == "COMPLETE" for t in done)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 12  # no point proposed twice
    ran = jobs(tmp_path / "sweep")
    assert sorted(ran) == list(range(12))  # trial n ran in folder n/, with trial n's parameters
    for t in done:
        assert (ran[t.number]["trial"], ran[t.number]["x"], ran[t.number]["y"]) == (t.number, t.params["x"], t.params["y"])
        assert sorted(t.intermediate_values) == [1, 2, 3]  # the job reported to its own trial
    # each worker's seed stream starts at its own first trial: three different seeds
    seeds = sorted(int(line.split("sampler seed ")[1].split()[0]) for out in outs for line in out.splitlines()
                   if "sampler seed" in line)
    assert len(seeds) == 3 and len(set(seeds)) == 3


def test_a_grid_runs_each_point_once_across_workers_and_a_finished_grid_runs_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    args = (f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=g", "hydra/sweeper/sampler=grid",
            "x=choice(0,1,2)", "hydra.sweeper.n_trials=6", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    workers(2, *args)
    done = trials(url, "g")
    assert sorted((t.params["x"], t.params["y"]) for t in done) == [(x, y) for x in (0, 1, 2) for y in "ab"]
    assert all(t.state.name == "COMPLETE" for t in done) and len(jobs(tmp_path / "sweep")) == 6
    again = run(*args)
    assert again.returncode == 0, again.stdout[-2000:]
    assert len(trials(url, "g")) == 6


def test_max_trials_caps_the_study_across_workers(tmp_path):
    url = f"journal:///{tmp_path / 'cap.log'}"
    workers(2, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=c", "hydra.sweeper.n_trials=5",
            "hydra.sweeper.max_trials=6", "sleep=0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    done = [t for t in trials(url, "c") if t.state.name == "COMPLETE"]
    assert sorted(t.number for t in done) == list(range(6))  # 6 ran although 10 were asked for
    assert sorted(jobs(tmp_path / "sweep")) == list(range(6))


def test_one_worker_on_the_same_storage_state_proposes_the_same_points(tmp_path):
    first = f"sqlite:///{tmp_path / 'a.db'}"
    assert run(f"hydra.sweeper.storage={first}", "hydra.sweeper.study_name=r", "hydra.sweeper.n_trials=3",
               f"hydra.sweep.dir={tmp_path / 's0'}").returncode == 0
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    params = []
    for db in ("a", "b"):
        proc = run(f"hydra.sweeper.storage=sqlite:///{tmp_path / db}.db", "hydra.sweeper.study_name=r",
                   "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / db}")
        assert proc.returncode == 0, proc.stdout[-2000:]
        params.append([t.params for t in trials(f"sqlite:///{tmp_path / db}.db", "r")][3:])
    assert params[0] == params[1] and len(params[0]) == 3
    assert len({json.dumps(p, sort_keys=True) for p in params[0]}) == 3


def beaten(url: str, trial) -> bool:
    """Whether the running trial has had a heartbeat: a row in Optuna's heartbeat table (SQLite),
    mmpt's stamp (a journal file, which has no heartbeat in Optuna)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url[len("sqlite:///"):]) as db:
            return bool(db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0])
    return "mmpt:heartbeat" in trial.system_attrs


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_run_again(tmp_path, kind):
    url = urls(tmp_path)[kind]
    beat = ("hydra.sweeper.heartbeat.interval=1", "hydra.sweeper.heartbeat.grace_period=3")
    args = (f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=k", *beat, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    doomed = start(*args, "hydra.sweeper.n_trials=1", "sleep=30")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until its trial runs (its point drawn, a heartbeat had)
            try:  # the database file appears before the study is in it
                running = [t for t in trials(url, "k") if t.state.name == "RUNNING"]
            except (KeyError, sqlite3.OperationalError):
                running = []
            if running and running[0].params and beaten(url, running[0]):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the first worker's trial never started")
        os.kill(doomed.pid, signal.SIGKILL)  # mid-trial: nothing of it can clean up
    finally:
        doomed.kill()
        doomed.wait()
    assert [t.state.name for t in trials(url, "k")] == ["RUNNING"]
    time.sleep(3.5)  # past the grace period
    proc = run(*args, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stdout[-2000:]
    killed, retried, fresh = trials(url, "k")
    assert (killed.state.name, retried.state.name, fresh.state.name) == ("FAIL", "COMPLETE", "COMPLETE")
    assert retried.params == killed.params  # the killed point ran again, in its own folder
    assert retried.system_attrs["failed_trial"] == 0  # Optuna's retry callback queued it
    assert jobs(tmp_path / "sweep")[1]["x"] == killed.params["x"]
    assert "no heartbeat" in proc.stdout


def test_a_pruner_stops_toy_trials_at_the_report_it_prunes(tmp_path):
    url = f"journal:///{tmp_path / 'p.log'}"
    proc = run(f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=p", "hydra/sweeper/pruner=threshold",
               "hydra.sweeper.pruner.upper=0.45", "hydra.sweeper.params.x=1.0", "hydra/sweeper/sampler=grid",
               f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stdout[-2000:]
    done = trials(url, "p")
    # x = 1: y=a reports 0.1, 0.2, 0.3 (never above 0.45); y=b reports 0.6 at step 1 and is pruned there
    by_y = {t.params["y"]: t for t in done}
    assert by_y["a"].state.name == "COMPLETE" and sorted(by_y["a"].intermediate_values) == [1, 2, 3]
    assert by_y["b"].state.name == "PRUNED" and list(by_y["b"].intermediate_values) == [1]
    assert jobs(tmp_path / "sweep")[by_y["b"].number]["pruned"] == 1
