"""How a run starts: the typed settings built and checked once (mmpt/settings.py), the start-up every
recipe shares (mmpt/recipes/start.py), and the run context's trial reaching the Trainer as its
on_eval hook (mmpt/context.py, mmpt/trial.py)."""
import json

import optuna
import pytest

from conftest import compose_cfg
from mmpt import settings, trial
from mmpt.context import RunContext, TrialSpec
from mmpt.errors import ConfigError
from mmpt.recipes import finetune, train
from mmpt.settings import EvaluationSettings, GroupSettings, TrainingSettings


def test_settings_carry_the_yaml_defaults_typed():
    s = settings.of(compose_cfg(["optimizer.groups.prefix.lr=0.05"]))
    assert s.training == TrainingSettings(batch_size=8, grad_accum=1, max_steps=None, epochs=10, grad_clip=1.0,
                                          eval_every=200, patience=None, log_every=10, precision="fp32",
                                          gradient_checkpointing=False, strategy="ddp")
    assert s.evaluation == EvaluationSettings(mode="rank", max_new_tokens=10, precision="fp32", length_norm=0,
                                              save_predictions=True)
    o = s.optimizer
    assert (o.name, o.lr, o.weight_decay, o.betas, o.warmup_ratio, o.warmup_steps) == \
        ("adamw", 3e-4, 0.0, (0.9, 0.999), 0.06, None)
    assert o.groups["prefix"].lr == 0.05 and o.groups["head"] == GroupSettings(None, None)
    ft = settings.of(compose_cfg(["finetune_type=Z"], config_name="finetune"))
    assert (ft.training.epochs, ft.training.eval_every, ft.optimizer.groups["routing"]) == (40, 50, GroupSettings(0.1, 0.0))


@pytest.mark.parametrize("override,key", [
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.max_steps=-1", "trainer.max_steps"),
    ("trainer.eval_mode=beam", "trainer.eval_mode"),
    ("trainer.precision=fp16", "trainer.precision"),
    ("trainer.grad_clip=0", "trainer.grad_clip"),
    ("trainer.log_every=0", "trainer.log_every"),
    ("trainer.gradient_checkpointing=yes", "trainer.gradient_checkpointing"),
    ("trainer.strategy=zero3", "trainer.strategy"),
    ("trainer.rank_length_norm=-1", "trainer.rank_length_norm"),
    ("trainer.save_predictions=maybe", "trainer.save_predictions"),
    ("optimizer.name=sgd", "optimizer.name"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("optimizer.warmup_ratio=2", "optimizer.warmup_ratio"),
    ("optimizer.warmup_steps=-3", "optimizer.warmup_steps"),
    ("optimizer.groups.prefix.weight_decay=-1", "optimizer.groups.prefix.weight_decay"),
])
def test_a_bad_setting_is_one_line_naming_its_key(override, key):
    with pytest.raises(ConfigError) as err:
        settings.of(compose_cfg([override]))
    assert str(err.value).startswith(f"config error at `{key}`: expected") and "\n" not in str(err.value)


@pytest.mark.parametrize("recipe", ["train", "transfer", "library"])
def test_every_recipe_refuses_a_seed_that_is_no_integer_before_writing(tmp_path, recipe):
    """The shared start-up's seed check; library= runs had lost it (set_seed then failed with a
    traceback, after the run dir was made)."""
    out = tmp_path / "run"
    if recipe == "train":
        cfg, run = compose_cfg(["model=t5_tiny", "seed=abc"], run_dir=out), train
    else:
        source = "library=" if recipe == "library" else "pretrained="
        cfg = compose_cfg([source + str(tmp_path / "nothing_there"), "seed=abc"], config_name="finetune", run_dir=out)
        run = finetune
    with pytest.raises(ConfigError, match="^config error at `seed`: expected an integer, got 'abc'$"):
        run(cfg)
    assert not out.exists()


def test_the_run_contexts_trial_reaches_the_trainer_and_prunes_it(tmp_path):
    """A run whose context names a trial reports each evaluation to it through the hook the recipe
    hands the Trainer, and stops at the evaluation its pruner prunes (no sweep, no Hydra)."""
    study = optuna.create_study(study_name="ctx", direction="maximize")
    number = study.ask().number
    trial.IN_PROCESS["ctx"] = study._storage  # an in-memory study, reachable in this process
    try:
        spec = TrialSpec("ctx", None, number, optuna.pruners.ThresholdPruner(lower=1000.0))
        cfg = compose_cfg(["model=t5_tiny", "method=lora", "dataset=cb", "trainer.max_steps=6", "trainer.eval_every=2",
                           "dataset.max_length=32"], run_dir=tmp_path)
        metrics = train(cfg, RunContext(trial=spec))
    finally:
        trial.IN_PROCESS.pop("ctx")
    (t,) = study.trials
    assert list(t.intermediate_values) == [2] and t.intermediate_values[2] == pytest.approx(metrics["val/acc"])
    assert metrics["pruned"] is True and metrics["pruned_step"] == 2
    assert max(json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")) == 2
