"""Every command in README.md and the docs pages works: it composes (or its tool parses it), and the
ones that can run offline run for real on a tiny backbone (tests/docs_commands.py says how)."""
import json
import os
import subprocess
import sys

import pytest

from docs_commands import ROOT, Command, check, collect, collect_text, run_argv

COMMANDS = collect()


def unique(commands):
    """One command per distinct text (pages repeat a few)."""
    seen = {}
    for c in commands:
        seen.setdefault((c.text, c.needs is None), c)
    return list(seen.values())


def test_the_collector_finds_commands_markers_and_continuations():
    page = """
    python train.py model=t5_tiny method=lora dataset=cb   # offline
Prose that ends the block.
<!-- needs: hub -->

    python train.py method=prefix dataset=rte \\
        trainer.max_steps=5
    OMP_NUM_THREADS=1 python -m mmpt.report multirun/
    python finetune.py pretrained=<run dir> dataset=rte     # needs: runs

```bash
python -m mmpt.export runs/x --format peft --out y
```
Text mentioning `python train.py method=lora` inline is not a command.
"""
    cmds = collect_text("page.md", page)
    assert [(c.line, c.script, c.needs) for c in cmds] == [
        (2, "train", None), (6, "train", "hub"), (8, "mmpt.report", "hub"), (9, "finetune", "runs"),
        (12, "mmpt.export", None)]
    assert cmds[1].argv == ["method=prefix", "dataset=rte", "trainer.max_steps=5"]
    assert cmds[3].argv == ["pretrained=PLACEHOLDER", "dataset=rte"]


def test_every_page_with_commands_is_collected():
    pages = {c.page for c in COMMANDS}
    for page in ("README.md", "docs/get-started.md", "docs/sweeps.md", "docs/methods/mttl.md",
                 "docs/libraries.md", "docs/export.md"):
        assert page in pages, page
    assert len(COMMANDS) > 60
    assert sum(c.needs is None for c in COMMANDS) > 40  # most lines run for real


def test_readme_commands_are_in_the_site():
    """README holds nothing the site does not: its commands are the pages' (so they run there)."""
    site = {c.text for c in COMMANDS if c.page != "README.md"}
    readme = [c for c in COMMANDS if c.page == "README.md"]
    assert readme and [c.text for c in readme if c.text not in site] == []


@pytest.mark.parametrize("cmd", unique(COMMANDS), ids=lambda c: c.where)
def test_command_composes_or_parses(cmd):
    cfg = check(cmd)
    if cfg is not None:
        assert cfg.dataset.name


@pytest.mark.parametrize("text", [
    "python train.py model=t5_tiny method=lora dataset=cb trainer.max_stepz=1",      # misspelled key
    "python train.py model=t5_tiny method=lora dataset=cb method.rnak=4",            # misspelled method key
    "python train.py model=t5_tiny method=lorra dataset=cb",                          # no such option
    "python finetune.py pretrained=runs/pre dataset=rte finetune_typo=Poly",
    "python -m mmpt.report multirun/ --baseline",                                    # flag without its value
    "python -m mmpt.library biuld --out libs/x runs/a",                              # no such subcommand
    "python -m mmpt.nosuchtool x",
])
def test_a_broken_command_is_caught(text):
    cmd = collect_text("page.md", f"    {text}\n")[0]
    with pytest.raises(Exception):
        check(cmd)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Runs every unmarked command of every page, page by page, in one process."""
    out = tmp_path_factory.mktemp("docs_runs")
    plan = {}
    for cmd in COMMANDS:
        if cmd.needs is None and cmd.page != "README.md":  # README's lines run on their pages
            try:
                argv = run_argv(cmd, check(cmd))
            except Exception:  # noqa: BLE001 - test_command_composes_or_parses shows why
                continue
            plan.setdefault(cmd.page, []).append({"where": cmd.where, "script": cmd.script, "argv": argv})
    (out / "plan.json").write_text(json.dumps([{"page": p, "commands": c} for p, c in plan.items()]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_runner.py"), str(out / "plan.json"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    assert (out / "results.json").exists(), log[-3000:]
    return json.loads((out / "results.json").read_text()), log


def log_of(log: str, where: str) -> str:
    """The runner's output of one command (between its two ### lines)."""
    start = log.find(f"### {where}: ")
    end = log.find(f"### {where}: exit", start)
    return log[start:end if end > 0 else None][-3000:]


@pytest.mark.subprocess
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.needs is None and c.page != "README.md"],
                         ids=lambda c: c.where)
def test_offline_command_runs(cmd, real_runs):
    results, log = real_runs
    assert cmd.where in results, f"{cmd.where}: {cmd.text!r} does not compose, so it did not run"
    r = results[cmd.where]
    assert r["code"] == 0 and r["missing"] is None, f"{cmd.text}\n{r}\n{log_of(log, cmd.where)}"


def test_a_real_run_is_made_small_and_offline():
    """What run_argv adds: a tiny backbone for a hub one, one step and one trial even where the page
    says more, a grid at its first point, a run dir of its own; what the page sets itself stays."""
    sweep, grid, encoder = collect_text("page.md", """
    python train.py -m hparams_search=lora method=lora dataset=rte hydra.sweeper.n_trials=30 trainer.max_steps=200
    python train.py -m method=lora,prefix dataset=rte,cb seed=0,1,2
    python train.py experiment=minilm_glue method=lora dataset=rte hydra.run.dir=runs/x
""")
    assert run_argv(sweep, check(sweep)) == [
        "-m", "hparams_search=lora", "method=lora", "dataset=rte", "model=t5_tiny", "trainer.max_steps=1",
        "hydra.sweeper.n_trials=1", f"hydra.sweep.dir=multirun/_line{sweep.line}"]
    assert run_argv(grid, check(grid))[:4] == ["-m", "method=lora", "dataset=rte", "seed=0"]
    assert run_argv(encoder, check(encoder)) == [
        "experiment=minilm_glue", "method=lora", "dataset=rte", "hydra.run.dir=runs/x", "model=local",
        "model.name_or_path=TINY_BERT", "trainer.max_steps=1"]


def test_a_sweep_whose_trials_failed_is_caught(tmp_path):
    """A sweep survives failing trials (max_failure_rate), so exit 0 is not enough: every trial
    folder must hold metrics.json."""
    from docs_runner import finished

    for n in ("0", "1"):
        (tmp_path / n).mkdir()
    (tmp_path / "0" / "metrics.json").write_text("{}")
    assert "without metrics.json: ['1']" in finished(tmp_path, multirun=True)
    (tmp_path / "1" / "metrics.json").write_text("{}")
    assert finished(tmp_path, multirun=True) is None
    assert finished(tmp_path / "0", multirun=False) is None
    assert "no metrics.json" in finished(tmp_path / "nosuch", multirun=False)
