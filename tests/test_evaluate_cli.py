"""python -m mmpt.evaluate's folders and files: results merged task by task, sweeps (finished runs
only, tasks already evaluated skipped unless --force), and bad input refused in one line with
nothing written."""
import json
import shutil
import subprocess
import sys

import pytest

from evaluate_helpers import runs  # noqa: F401  (a fixture)
from mmpt.evaluate.__main__ import main


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(runs, tmp_path):
    out = tmp_path / "sweep" / "0"
    shutil.copytree(runs("gpt2", "lora"), out)
    shutil.rmtree(out / "eval", ignore_errors=True)
    return out


def results(run):
    return json.loads((run / "eval" / "results.json").read_text())


def test_later_evaluations_replace_their_tasks_entry(run, capsys):
    assert main([str(run), "--tasks", "mmpt_cb", "--limit", "5"]) == 0
    assert main([str(run), "--tasks", "mmpt_rte", "--limit", "4"]) == 0
    assert main([str(run), "--tasks", "mmpt_cb", "--limit", "7"]) == 0
    res = results(run)
    assert sorted(res["results"]) == ["mmpt_cb", "mmpt_rte"]
    assert res["n-samples"]["mmpt_cb"]["effective"] == 7 and res["n-samples"]["mmpt_rte"]["effective"] == 4
    assert not list((run / "eval").glob("*.tmp"))


def test_a_sweep_scores_finished_runs_and_skips_what_is_done(run, tmp_path, capsys):
    sweep = run.parent
    shutil.copytree(run, sweep / "1")
    pruned = sweep / "2"
    shutil.copytree(run, pruned)
    (pruned / "metrics.json").write_text(json.dumps({"pruned": True, "pruned_step": 1}))
    failed = sweep / "3"
    (failed / ".hydra").mkdir(parents=True)
    shutil.copy(run / ".hydra" / "config.yaml", failed / ".hydra")
    assert main([str(sweep), "--tasks", "mmpt_cb", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{pruned}: skipped (pruned" in out and f"{failed}: skipped (no metrics.json" in out
    assert "mmpt_cb" in results(sweep / "0")["results"] and "mmpt_cb" in results(sweep / "1")["results"]
    assert not (pruned / "eval").exists() and not (failed / "eval").exists()
    before = snapshot(sweep / "0")
    assert main([str(sweep), "--tasks", "mmpt_cb", "--limit", "3"]) == 0
    assert "already evaluated on mmpt_cb" in capsys.readouterr().out
    assert snapshot(sweep / "0") == before
    assert main([str(sweep), "--tasks", "mmpt_cb", "--limit", "4", "--force"]) == 0
    assert results(sweep / "0")["n-samples"]["mmpt_cb"]["effective"] == 4


def refused(argv, capsys, want: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and want in err, err


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    before = snapshot(run)
    refused([str(run), "--tasks", "mmpt_cb", "--limit", "0"], capsys, "--limit 0")
    refused([str(tmp_path / "empty_dir_that_is_absent"), "--tasks", "mmpt_cb"], capsys, "is not a directory")
    (tmp_path / "empty").mkdir()
    refused([str(tmp_path / "empty"), "--tasks", "mmpt_cb"], capsys, "no finished train.py or finetune.py run")
    refused([str(run), "--tasks", "mmpt_wicc"], capsys, "did you mean mmpt_wic")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text("{not json")
    refused([str(run), "--tasks", "mmpt_cb"], capsys, "unreadable results file")
    (run / "eval" / "results.json").unlink()
    (run / "eval").rmdir()
    assert snapshot(run) == before
    shutil.rmtree(run / "checkpoints" / "best")
    refused([str(run), "--tasks", "mmpt_cb"], capsys, "no complete checkpoints/best")
    assert not (run / "eval").exists()


def test_an_encoder_run_is_refused_and_skipped_in_a_sweep(run, capsys):
    from evaluate_helpers import train_run

    enc = train_run(run.parent / "enc", ["model=minilm", "method=lora", "dataset=cb", "k_shot=4",
                                         "trainer.max_steps=1", "trainer.eval_every=1", "trainer.batch_size=4"])
    refused([str(enc), "--tasks", "mmpt_cb"], capsys, "is an encoder run")
    assert main([str(run.parent), "--tasks", "mmpt_cb", "--limit", "3"]) == 0  # the sweep goes on past it
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{enc}:")]
    assert len(lines) == 1 and lines[0].startswith(f"{enc}: skipped (") and "is an encoder run" in lines[0]
    assert "mmpt_cb" in results(run)["results"] and not (enc / "eval").exists()


@pytest.mark.subprocess
def test_without_lm_eval_one_line_names_the_extra(tmp_path):
    """lm_eval hidden from the interpreter: the command says which extra to install."""
    code = ("import sys; sys.modules['lm_eval'] = None; from mmpt.evaluate.__main__ import main; "
            f"sys.exit(main([{str(tmp_path)!r}, '--tasks', 'mmpt_cb']))")
    (tmp_path / ".hydra").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "`eval` extra" in proc.stderr and "Traceback" not in proc.stderr


def test_tasks_dir_holds_a_yaml_per_dataset(capsys):
    from pathlib import Path

    from mmpt.data.tasks import TASKS

    assert main(["--tasks-dir"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert sorted(p.stem for p in folder.glob("mmpt_*.yaml")) == sorted(f"mmpt_{t}" for t in TASKS)
