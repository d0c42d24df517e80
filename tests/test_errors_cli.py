"""One-line refusals of the command line: a report over a folder without runs, and finetune.py
given model= (the backbone comes from the library or the pretrained run)."""
import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT, compose_cfg
from mmpt.errors import ConfigError
from mmpt.recipes import finetune
from mmpt.report.__main__ import main as report


def test_a_report_over_an_empty_folder_fails_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'empty'}: no runs in it or under it (expected folders with metrics.json "
                   "and .hydra/config.yaml, as train.py and finetune.py write them); nothing written\n")
    assert list((tmp_path / "empty").iterdir()) == []
    assert report([str(tmp_path / "empty"), "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def test_a_report_over_incomplete_runs_only_fails_and_writes_nothing(tmp_path, capsys):
    for name in ("a", "b"):  # killed before their first metrics.json
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("seed: 0\n")
    assert report([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no finished runs found under {tmp_path}: 2 incomplete" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("source, where", [("library=some/library", "its index.json"),
                                           ("pretrained=some/run", "its .hydra/config.yaml")])
def test_finetune_refuses_model_naming_where_the_backbone_comes_from(tmp_path, source, where):
    cfg = compose_cfg([source, "model=gpt2_tiny", "dataset=cb"], config_name="finetune", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        finetune(cfg)
    assert str(e.value) == (f"config error at `model`: finetune.py takes the backbone from {source} ({where}); "
                            "drop model= (got gpt2_tiny; debug=fast sets it too)")
    assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
def test_finetune_py_with_model_and_library_is_one_line_not_hydras_error(tmp_path):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "finetune.py", f"library={tmp_path / 'lib'}", "model=gpt2_tiny",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Could not override" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: config error at `model`: finetune.py takes the backbone from library={tmp_path / 'lib'} (its "
        "index.json); drop model= (got gpt2_tiny; debug=fast sets it too)"]
