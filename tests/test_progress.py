"""Progress (mmpt/engine/progress.py): a bar on a terminal, throttled lines in a log file, and the
loops that report through it (training, evaluation, Arrow prototypes)."""
import logging

import pytest
import torch
from tqdm.auto import tqdm

from conftest import compose_cfg
from mmpt.engine import progress
from mmpt.engine.progress import Lines


class Clock:
    """A fake monotonic clock: tests move time by hand, nothing sleeps."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def lines(total, **kw):
    clock, out = Clock(), []
    return Lines(total, "eval", clock=clock, emit=out.append, **kw), clock, out


def test_a_line_needs_30_s_and_10_percent_since_the_last_one():
    bar, clock, out = lines(1000)
    for _ in range(99):  # 9.9%: however long it takes, not yet
        clock.t += 10
        bar.update()
    assert out == []
    clock.t += 10
    bar.update()  # 10% and 1000 s: the first line
    assert out == ["eval: 100/1000 (10%) in 16m40s, about 2h30m00s left"]
    for _ in range(150):  # fast batches: 15% more but only 15 s: no line
        clock.t += 0.1
        bar.update()
    assert len(out) == 1
    clock.t += 16
    bar.update()  # 31 s and 15.1% since the last line
    assert len(out) == 2 and out[1].startswith("eval: 251/1000 (25%) in 17m11s")


def test_a_quick_loop_writes_nothing_and_a_slow_one_ends_with_a_line():
    bar, clock, out = lines(50)
    for _ in range(50):
        clock.t += 0.5  # 25 s in all
        bar.update()
    bar.close()
    assert out == []
    bar, clock, out = lines(4)
    for _ in range(4):
        clock.t += 10
        bar.update()
    assert len(out) == 1 and out[0].startswith("eval: 3/4 (75%) in 0m30s")  # the last update is close()'s
    bar.close()
    bar.close()  # closing twice writes one final line
    assert out[1:] == ["eval: 4/4 (100%) in 0m40s"]


def test_lines_without_a_total_and_with_a_postfix():
    bar, clock, out = lines(None)
    bar.set_postfix(loss="0.6931", lr="1.00e-03")
    clock.t += 29
    bar.update()
    clock.t += 1
    bar.update(2)
    assert out == ["eval: 3 in 0m30s, loss=0.6931, lr=1.00e-03"]


def test_a_bar_on_a_terminal_lines_in_a_file_nothing_when_disabled(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert isinstance(progress.bar(10, "train"), tqdm)
    assert progress.bar(10, "train", enabled=False).disable
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert isinstance(progress.bar(10, "train"), Lines)
    assert progress.bar(10, "train", enabled=False).disable


def test_training_evaluation_and_prototypes_report_progress(tmp_path, monkeypatch, caplog):
    """Off a terminal (pytest captures stderr), with every throttle at 0 each loop logs a line per
    step: the train loop, every evaluation (val during training, then test) and Arrow's prototypes."""
    from mmpt.recipes import train
    from mmpt.library.methods import prototypes

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "FRACTION", 0.0)
    cfg = compose_cfg(["model=t5_tiny", "method=lora", "dataset=cb", "trainer.max_steps=2", "trainer.eval_every=2",
                       "trainer.batch_size=8", "trainer.eval_batch_size=16", "dataset.max_length=64"], run_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="mmpt.engine.progress"):
        train(cfg)
        prototypes({"m": (torch.randn(3, 2, 8), torch.randn(3, 5, 2))})  # 3 experts at one module
    said = [r.getMessage() for r in caplog.records if r.name == "mmpt.engine.progress"]
    assert [s.split(" in ")[0] for s in said if s.startswith("train: ")] == ["train: 1/2 (50%)", "train: 2/2 (100%)"]
    assert all("loss=" in s for s in said if s.startswith("train: "))
    assert [s.split(" in ")[0] for s in said if s.startswith("val")] == ["val (step 2): 1/2 (50%)",
                                                                          "val (step 2): 2/2 (100%)"]  # 10% of 250
    assert [s.split(" in ")[0] for s in said if s.startswith("eval")][-1] == "eval: 4/4 (100%)"  # test: 56 examples
    assert "arrow prototypes: 3/3 (100%) in 0m00s" in said
