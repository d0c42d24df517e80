"""Storages as a user meets them (toy app, tests/sweep_toy): a URL error is one line with the
password masked, a journal cut mid-line by a killed worker stays readable, one study reached
through two URL forms is one study, a misspelled study_name can be refused, and max_trials holds."""
import json
import os

import optuna
import pytest

from sweep_toy import ROOT, jobs, run, trials
from test_sweep_errors import one_line_error

pytestmark = [pytest.mark.subprocess, pytest.mark.sweep]


@pytest.mark.parametrize("url,words", [
    ("postgresql://mmpt:s3cr@tW0rd@127.0.0.1:1/mmpt", "percent-encode"),
    ("postgresql://mmpt:s3cr/tW0rd@127.0.0.1:1/mmpt", "percent-encode"),
    ("sqllite:///study.db", "unknown scheme 'sqllite://', expected one of"),
    ("postgres://mmpt:s3crtW0rd@127.0.0.1:1/mmpt", "unknown scheme 'postgres://' (PostgreSQL's is postgresql://)"),
])
def test_a_bad_storage_url_is_one_line_and_never_shows_the_password(tmp_path, url, words):
    proc = run(f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert words in one_line_error(proc, "hydra.sweeper.storage")
    assert "s3cr" not in proc.stdout + proc.stderr and "tW0rd" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_file_that_is_no_database_is_named_so(tmp_path):
    (tmp_path / "notes.db").write_text("these are my notes, not a study\n")
    proc = run(f"hydra.sweeper.storage=sqlite:///{tmp_path / 'notes.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    line = one_line_error(proc, "hydra.sweeper.storage")
    assert "notes.db is not a database" in line and "cannot be reached" not in line
    assert (tmp_path / "notes.db").read_text() == "these are my notes, not a study\n"  # left as it was


def test_a_journal_cut_mid_line_loses_the_cut_record_only_and_stays_readable(tmp_path):
    path = tmp_path / "j.log"
    args = (f"hydra.sweeper.storage=journal:///{path}", "hydra.sweeper.study_name=j", f"hydra.sweep.dir={tmp_path / 's'}")
    assert run(*args, "hydra.sweeper.n_trials=2").returncode == 0
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1  # the last record: trial 1 told COMPLETE
    assert json.loads(data[last:])["op_code"] == 6  # Optuna's SET_TRIAL_STATE_VALUES
    path.write_bytes(data[: last + (len(data) - last) // 2])  # a worker killed while writing it
    proc = run(*args, "hydra.sweeper.n_trials=1")
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert proc.stdout.count("was cut mid-write") == 1  # said once
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # every line a whole record
    # trial 1's last record is gone (it is RUNNING again, for the heartbeat to fail); the rest holds
    assert [t.state.name for t in trials(f"journal:///{path}", "j")] == ["COMPLETE", "RUNNING", "COMPLETE"]


def test_a_journal_with_a_broken_line_before_its_end_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "j.log"
    args = (f"hydra.sweeper.storage=journal:///{path}", "hydra.sweeper.study_name=j")
    assert run(*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 's'}").returncode == 0
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:10] + lines[3]  # what Optuna's append after a cut record made
    del lines[3]
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    proc = run(*args, f"hydra.sweep.dir={tmp_path / 's2'}")
    assert f"{path}:3: not a journal record" in one_line_error(proc, "hydra.sweeper.storage")
    assert path.read_bytes() == before and not (tmp_path / "s2").exists()


def test_one_study_through_a_relative_and_an_absolute_sqlite_path_shares_its_sweep_dir(tmp_path):
    relative = os.path.relpath(tmp_path / "s.db", ROOT)  # the toy runs in ROOT
    assert not os.path.isabs(relative)
    args = ("hydra.sweeper.study_name=s", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert run(f"hydra.sweeper.storage=sqlite:///{relative}", *args).returncode == 0
    proc = run(f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", *args)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert sorted(jobs(tmp_path / "sweep")) == [0, 1] and len(trials(f"sqlite:///{tmp_path / 's.db'}", "s")) == 2
    # another study (another name) on that file is still kept out of the folders
    other = run(f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", "hydra.sweeper.study_name=t", *args[1:])
    assert "of another study" in one_line_error(other, "hydra.sweep.dir")


def test_load_if_exists_only_refuses_a_misspelled_study_and_a_new_study_beside_others_is_said_loudly(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run(f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=lora_rte", "hydra.sweeper.n_trials=1",
               f"hydra.sweep.dir={tmp_path / 'a'}").returncode == 0
    typo = run(f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=lora_ret", "hydra.sweeper.load_if_exists=only",
               f"hydra.sweep.dir={tmp_path / 'b'}")
    line = one_line_error(typo, "hydra.sweeper.study_name")
    assert "no study 'lora_ret'" in line and "it holds: lora_rte" in line
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["lora_rte"] and not (tmp_path / "b").exists()
    resumed = run(f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=lora_rte", "hydra.sweeper.load_if_exists=only",
                  "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'a'}")
    assert resumed.returncode == 0 and len(trials(url, "lora_rte")) == 2
    new = run(f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=other", "hydra.sweeper.n_trials=1",
              f"hydra.sweep.dir={tmp_path / 'c'}")
    assert new.returncode == 0 and "NEW STUDY other" in new.stdout and "holds 1 other(s): lora_rte" in new.stdout


def test_max_trials_leaves_exactly_that_many_trials_none_failed_and_says_when_it_is_reached(tmp_path):
    url = f"sqlite:///{tmp_path / 'cap.db'}"
    args = (f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=c", "hydra.sweeper.max_trials=3",
            "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    first = run(*args)
    assert first.returncode == 0 and "this worker stops after 3 of its 5" in first.stdout, first.stdout[-1500:]
    assert [t.state.name for t in trials(url, "c")] == ["COMPLETE"] * 3
    again = run(*args)
    assert again.returncode == 0 and "already holds max_trials=3 trials: nothing to run" in again.stdout
    assert [t.state.name for t in trials(url, "c")] == ["COMPLETE"] * 3 and sorted(jobs(tmp_path / "sweep")) == [0, 1, 2]
