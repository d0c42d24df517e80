"""README's sweep commands run as written: each `python train.py -m hparams_search=...` line runs one
trial on t5_tiny (lines for a server HOST, a shared filesystem or Slurm cannot run here), with its
SQLite file in the test's folder and one job at a time. A preset selects its method, so a line
needs no `method=`: trial 0 completes with a val score and the study holds it."""
import json
import re
import shlex

import optuna
import pytest

from conftest import ROOT
from test_report_sweep import multirun

pytestmark = pytest.mark.sweep


def readme_sweep_lines() -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())  # continued lines joined
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line.startswith("python train.py -m hparams_search=")
            and not re.search(r"HOST|/shared/fs|slurm|\.\.\.", line)]


def test_readme_has_runnable_sweep_lines():
    """README is short now (the manual is docs/, whose commands test_docs_commands.py runs): it keeps
    one sweep line, which must run as written."""
    assert len(readme_sweep_lines()) >= 1


@pytest.mark.subprocess
@pytest.mark.parametrize("line", readme_sweep_lines())
def test_a_readme_sweep_line_runs_one_trial_on_a_tiny_model(tmp_path, line):
    args = shlex.split(line.split("#")[0])[3:]  # after `python train.py -m`
    args = [re.sub(r"sqlite:///(\w+\.db)", rf"sqlite:///{tmp_path}/\1", a) for a in args]
    args = [re.sub(r"hydra\.launcher\.n_jobs=\d+", "hydra.launcher.n_jobs=1", a) for a in args]
    proc = multirun("train.py", *args, "model=t5_tiny", "trainer.max_steps=2", "trainer.eval_every=2",
                    "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "FAIL" not in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert any(k.startswith("val/") and isinstance(v, float) for k, v in metrics.items())
    storage = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.sweeper.storage="))
    name = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.sweeper.study_name=")),
                args[0].split("=", 1)[1])  # a preset names its study after itself
    assert [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials] == ["COMPLETE"]
