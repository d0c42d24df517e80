"""The training engine: parameter groups, weight decay, schedule, NaN handling, evaluation and
the random stream. Resume equality: tests/test_resume.py (killed subprocesses)."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, make_model
from mmpt.engine.loop import Trainer, TrainingError
from mmpt.engine.optim import build_optimizer, check_groups
from mmpt.errors import ConfigError
from mmpt.settings import optimizer
from mmpt.recipes import train


def opt_cfg(**over):
    base = dict(name="adamw", lr=1e-3, weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8,
                warmup_ratio=0.25, warmup_steps=None, groups={})
    return optimizer(OmegaConf.create({**base, **over}))


def test_groups_get_their_own_lr_and_the_schedule_keeps_ratios():
    model = make_model("prefix")
    opt, sched, summary = build_optimizer(model.param_groups(), opt_cfg(groups={"prefix": {"lr": 0.05}}), total_steps=8)
    assert summary == [("prefix", model.method.prefix.numel(), 0.05, 0.0)]
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # 2 warmup steps (25% of 8) from 0, then linear decay to 0 at step 8
    assert lrs == pytest.approx([0.0, 0.025, 0.05, 0.04167, 0.03333, 0.025, 0.01667, 0.00833], abs=1e-4)


def test_two_groups_keep_their_ratio_through_the_schedule():
    model = make_model("prefix")
    model.method.extra = torch.nn.Parameter(torch.zeros(3))
    real = model.method.param_groups
    model.method.param_groups = lambda: {**real(), "mask": [model.method.extra]}
    opt, sched, _ = build_optimizer(model.param_groups(), opt_cfg(groups={"prefix": {"lr": 0.5}, "mask": {"lr": 0.05}}), 10)
    for _ in range(5):
        opt.step()
        sched.step()
        a, b = (g["lr"] for g in opt.param_groups)
        assert a == pytest.approx(10 * b)


def test_each_group_gets_its_configured_weight_decay():
    """optimizer.groups.<g>.weight_decay, else optimizer.weight_decay; AdamW applies it: one step on
    a zero gradient multiplies a group's parameters by exactly (1 - lr * weight_decay)."""
    model = make_model("prefix")
    model.method.extra = torch.nn.Parameter(torch.ones(3))
    real = model.method.param_groups
    model.method.param_groups = lambda: {**real(), "mask": [model.method.extra]}
    cfg = opt_cfg(weight_decay=0.25, warmup_ratio=0.0, groups={"prefix": {"lr": 0.1, "weight_decay": 0.5}})
    opt, _, summary = build_optimizer(model.param_groups(), cfg, total_steps=10)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [("prefix", 0.1, 0.5),
                                                                                 ("mask", 1e-3, 0.25)]
    assert [(name, wd) for name, _, _, wd in summary] == [("prefix", 0.5), ("mask", 0.25)]
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    after = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert torch.allclose(after[0], before[0] * (1 - 0.1 * 0.5))
    assert torch.allclose(after[1], before[1] * (1 - 1e-3 * 0.25))


def test_stray_and_doubled_parameters_are_refused():
    model = make_model("prefix")
    model.method.stray = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="in no group"):
        check_groups(model, model.method.param_groups())
    model = make_model("prefix")
    with pytest.raises(ConfigError, match="both"):
        check_groups(model, {"prefix": [model.method.prefix], "mask": [model.method.prefix]})


@pytest.mark.parametrize("over,key", [
    ({"groups": {"router": {"lr": 0.1}}}, "optimizer.groups.router"),
    ({"groups": {"prefix": {"lr": -1.0}}}, "optimizer.groups.prefix.lr"),
    ({"lr": "fast"}, "optimizer.lr"),
    ({"name": "sgd"}, "optimizer.name"),
])
def test_bad_optimizer_config_names_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_optimizer(make_model("prefix").param_groups(), opt_cfg(**over), 10)


def small_run(tmp_path, *over):
    return compose_cfg(["model=t5_tiny", "method=prefix", "dataset=cb", "trainer.batch_size=16",
                        "trainer.eval_batch_size=64", "dataset.max_length=64", *over], run_dir=tmp_path)


def test_nan_loss_stops_the_run_with_a_message(tmp_path, monkeypatch):
    cfg = small_run(tmp_path, "trainer.max_steps=3")
    monkeypatch.setattr("mmpt.models.seq2seq.Seq2SeqModel.forward",
                        lambda self, batch: (torch.tensor(float("nan"), requires_grad=True), {}))
    with pytest.raises(TrainingError, match="loss is nan at step 0"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_training_does_not_depend_on_how_often_it_evaluates(tmp_path):
    """Evaluation leaves the random stream alone: with dropout on, the losses of every step are the
    same whether the run evaluates every 2 steps or only at the end (resume relies on this too)."""
    losses = {}
    for every in (2, 0):
        out = tmp_path / str(every)
        train(small_run(out, "trainer.max_steps=6", f"trainer.eval_every={every}", "trainer.log_every=1"))
        losses[every] = [json.loads(l)["train/loss"] for l in open(out / "metrics.jsonl") if '"train"' in l]
    assert small_run(tmp_path).model.dropout > 0 and len(losses[0]) == 6
    assert losses[2] == losses[0]


def test_mean_over_seeds_runs_each_seed_in_its_own_dir(tmp_path):
    from mmpt.cli import over_seeds

    cfg = small_run(tmp_path, "trainer.max_steps=2", "trainer.eval_every=2", "mean_over_seeds=[0,1]")
    mean = over_seeds(train, cfg)
    runs = [json.loads((tmp_path / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert all((tmp_path / f"seed_{s}" / "checkpoints" / "best").exists() for s in (0, 1))
    assert mean["test/acc"] == pytest.approx((runs[0]["test/acc"] + runs[1]["test/acc"]) / 2)
    assert json.loads((tmp_path / "metrics.json").read_text())["seeds"] == [0, 1]


def test_patience_stops_after_evals_without_improvement(tmp_path, monkeypatch):
    """Val accuracy 0.5, 0.6, 0.6, 0.55, ...: best at the 2nd eval, two evals without gain, stop."""
    scores = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.9])
    real = Trainer._eval.__globals__["evaluate"]

    def scripted(*args, **kw):
        metrics, rows, stats = real(*args, **kw)
        return {**metrics, "acc": next(scores)}, rows, stats

    monkeypatch.setitem(Trainer._eval.__globals__, "evaluate", scripted)
    cfg = small_run(tmp_path, "trainer.max_steps=30", "trainer.eval_every=2", "trainer.patience=2")
    trainer_metrics = train(cfg)
    evals = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"eval"' in l]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    assert trainer_metrics["best_step"] == 4
