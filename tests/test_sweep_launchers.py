"""The launchers of the sweep extra run train.py trials: joblib runs two at once in two processes
that share the cores, submitit's local executor (the code path of its Slurm executor) runs a batch."""
import json
import re
from datetime import datetime

import optuna
import pytest

from test_report_sweep import multirun

pytestmark = pytest.mark.sweep

TRIAL = ("model=t5_tiny", "method=lora", "dataset=cb", "hparams_search=lora", "trainer.max_steps=4",
         "trainer.eval_every=2", "dataset.max_length=32", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
THREADS = re.compile(r"pid (\d+): (\d+) torch threads \((\d+) cores, (\d+) trials at once\)")


def trial_log(run) -> tuple[int, int, int, datetime, datetime]:
    """(pid, torch threads, cores, first and last time stamp) of a trial's train.log."""
    text = (run / "train.log").read_text()
    pid, threads, cores, at_once = map(int, THREADS.search(text).groups())
    assert at_once == min(2, cores)
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in map(STAMP.match, text.splitlines()) if m]
    return pid, threads, cores, stamps[0], stamps[-1]


@pytest.mark.subprocess
def test_joblib_runs_two_trials_at_once_in_two_processes_each_with_its_share_of_the_cores(tmp_path):
    proc = multirun("train.py", *TRIAL, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path / 'j.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (a, b) = [trial_log(tmp_path / "sweep" / str(n)) for n in (0, 1)]
    assert a[0] != b[0]  # two processes
    assert a[3] < b[4] and b[3] < a[4]  # that ran at the same time
    assert a[1] == b[1] == max(1, a[2] // 2)  # each with half the cores' threads, not all of them
    study = optuna.load_study(study_name="lora", storage=f"sqlite:///{tmp_path / 'j.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [2, 4] for t in study.trials)  # reported from the workers


@pytest.mark.subprocess
def test_submitit_local_executor_runs_a_batch_of_trials(tmp_path):
    proc = multirun("train.py", *TRIAL, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="lora", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:
        metrics = json.loads((tmp_path / "sweep" / str(t.number) / "metrics.json").read_text())
        assert metrics[metrics["optimized_metric_key"]] == pytest.approx(t.value)  # came back from the submitit job
        assert sorted(t.intermediate_values) == [2, 4]  # and the job reported to its trial through the storage
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # its jobs' files: they ran through submitit
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # the trials' logs, where README says
    for t in study.trials:  # the sweep says when each trial is done (its log is elsewhere)
        assert f"trial {t.number} finished: {t.value}" in proc.stdout + proc.stderr


def test_trainer_threads_sets_torch_threads_and_a_bad_value_is_refused_before_anything_is_written(tmp_path):
    import torch

    from conftest import compose_cfg
    from mmpt.cli import run_threads, set_threads
    from test_cli import run_cli

    before = torch.get_num_threads()
    try:
        plan = run_threads(compose_cfg(["trainer.threads=1"]))
        assert plan[0] == 1 and plan[2] == 1  # outside a sweep: one run at a time
        set_threads(plan)
        assert torch.get_num_threads() == 1
        assert run_threads(compose_cfg([]))[0] is None  # default: torch's own choice (all cores)
    finally:
        torch.set_num_threads(before)
    proc = run_cli(tmp_path, "model=t5_tiny", "dataset=cb", "trainer.threads=0")
    assert proc.returncode == 2 and "trainer.threads" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".hydra").exists()
