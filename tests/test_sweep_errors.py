"""Bad sweep settings: one line on stderr naming the key, exit status 2, before any trial starts
(no study created, no trial folder written). Mostly on the toy app (tests/sweep_toy), whose sweeper
is train.py's; one case through train.py itself."""
import socket
import time

import optuna
import pytest

from conftest import ROOT
from sweep_toy import run
from test_report_sweep import multirun

pytestmark = pytest.mark.sweep


def one_line_error(proc, key: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"`{key}`" in lines[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.subprocess
@pytest.mark.parametrize("override,key,words", [
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs", "integer >= 1"),
    ("hydra.sweeper.pruner._target_=optuna.pruners.NoSuchPruner", "hydra.sweeper.pruner", "NoSuchPruner"),
    ("hydra.sweeper.pruner._target_=optuna.samplers.RandomSampler", "hydra.sweeper.pruner._target_", "not an Optuna pruner"),
    # the presets listed are the app's (conf/hydra/sweeper/pruner/), a contributor's new one among them
    ("hydra.sweeper.pruner._target_=null", "hydra.sweeper.pruner", "pruner=hyperband|median|none|successive_halving|threshold"),
    ("hydra.sweeper.storage=journal:////no/such/dir/study.log", "hydra.sweeper.storage", "/no/such/dir does not exist"),
    ("hydra.sweeper.storage=sqlite:////no/such/dir/study.db", "hydra.sweeper.storage", "/no/such/dir does not exist"),
    ("hydra.sweeper.storage=journal://relative.log", "hydra.sweeper.storage", "journal:///"),
    ("hydra.sweeper.max_trials=0", "hydra.sweeper.max_trials", "integer >= 1"),
    ("hydra.sweeper.direction=up", "hydra.sweeper.direction", "minimize, maximize"),
])
def test_bad_settings_fail_in_one_line_before_any_trial(tmp_path, override, key, words):
    proc = run(override, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert words in one_line_error(proc, key)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.subprocess
def test_a_pruner_that_cannot_reach_an_in_memory_study_from_other_processes_is_refused(tmp_path):
    proc = run("hydra/sweeper/pruner=median", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert "cannot reach an in-memory study" in one_line_error(proc, "hydra.sweeper.pruner")
    assert not (tmp_path / "sweep").exists()
    # the same pruner with a storage the jobs can open runs
    ok = run("hydra/sweeper/pruner=median", "hydra/launcher=joblib", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
             f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", f"hydra.sweep.dir={tmp_path / 'ok'}")
    assert ok.returncode == 0, ok.stdout[-1500:]


@pytest.mark.subprocess
def test_a_database_that_does_not_answer_is_a_timeout_with_the_password_masked(tmp_path):
    """A server that accepts the connection and then says nothing: the connect timeout (10 s) ends it."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        start = time.time()
        proc = run(f"hydra.sweeper.storage=postgresql://mmpt:hunter2@127.0.0.1:{port}/mmpt",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=120)
        took = time.time() - start
    line = one_line_error(proc, "hydra.sweeper.storage")
    assert "cannot be reached" in line and "mmpt:***@127.0.0.1" in line and "hunter2" not in proc.stdout + proc.stderr
    assert took < 60  # bounded by the connect timeout, not a hang
    # nothing listening at all: refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    refused = run(f"hydra.sweeper.storage=postgresql://mmpt@127.0.0.1:{closed}/mmpt", f"hydra.sweep.dir={tmp_path / 's2'}")
    assert "cannot be reached" in one_line_error(refused, "hydra.sweeper.storage")


@pytest.mark.subprocess
def test_train_py_refuses_bad_sweep_settings_in_one_line(tmp_path):
    proc = multirun("train.py", "model=t5_tiny", "method=lora", "dataset=cb", "hparams_search=lora",
                    "hydra/sweeper/pruner=hyperband", "optimized_metric=test/acc",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert "val metric" in one_line_error(proc, "optimized_metric")
    assert not (tmp_path / "sweep").exists()
    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 's.db'}") == []  # nothing asked


@pytest.mark.subprocess
@pytest.mark.parametrize("script, override, key", [
    ("train.py", "hydra/sweeper/pruner=nosuch", "hydra/sweeper/pruner"),
    ("train.py", "method=lora,nosuch", "method"),  # each value of a sweep over a group
    ("finetune.py", "hydra/sweeper/sampler=nosuch", "hydra/sweeper/sampler"),
])
def test_an_unknown_group_option_is_one_line_naming_the_group_and_its_options(tmp_path, script, override, key):
    proc = multirun(script, "model=t5_tiny", "dataset=cb", "hparams_search=lora", override,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    line = one_line_error(proc, key)
    assert "no option 'nosuch' (expected one of: " in line and "Could not" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_known_options_sweep_values_and_extra_config_dirs_pass_the_option_check(tmp_path):
    from mmpt.cli import refuse_unknown_options
    conf = [ROOT / "conf"]
    refuse_unknown_options(conf, ["method=lora,prefix", "hydra/sweeper/pruner=hyperband", "+experiment=mmpt_rte",
                                  "dataset=choice(rte,cb)", "hydra/launcher=joblib", "trainer.max_steps=3", "~logger"])
    refuse_unknown_options(conf, ["--config-dir", str(tmp_path), "method=mine"])  # options may live in that dir
    with pytest.raises(SystemExit) as e:
        refuse_unknown_options(conf, ["method=lora", "dataset=nosuch"])
    assert e.value.code == 2
    finetune_conf = [ROOT / "conf", ROOT / "mmpt" / "conf_finetune"]  # finetune.py's presets are options there
    refuse_unknown_options(finetune_conf, ["hparams_search=mttl_finetune"])
    with pytest.raises(SystemExit):
        refuse_unknown_options(conf, ["hparams_search=mttl_finetune"])


@pytest.mark.subprocess
def test_trial_values_that_do_not_fit_the_config_stop_the_sweep_in_one_line(tmp_path):
    """Every trial of such a space would fail alike (a preset's space over another method's keys)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run("++hydra.sweeper.params={nosuch: 'choice(1,2)'}", f"hydra.sweeper.storage={url}",
               "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    line = one_line_error(proc, "hydra.sweeper.params")
    assert "trial 0's values do not fit the config" in line and "nosuch" in line
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=url).trials] == ["FAIL"]
