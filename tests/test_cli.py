"""The command line: every config composes, a real run writes its files, bad input fails early."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import DATA, ROOT, compose_cfg

GROUPS = ["model", "method", "dataset", "optimizer", "router", "logger", "debug", "experiment"]


def options(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg.method.name and cfg.dataset.name and cfg.optimizer.name
    assert set(cfg.optimizer.groups) <= {"backbone", "prompt", "prefix", "mask", "router",
                                         "shared_embedding", "adapters", "routing", "head"}


def test_every_config_key_is_commented():
    """Each YAML file starts with a comment; every key has a comment on its line or the line
    above, except section heads (`key:` with nested keys below, which carry the comments)."""
    key = re.compile(r"^\s*[\w.@/]+:")
    for path in [*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "mmpt" / "conf_finetune").rglob("*.yaml")]:
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path} has no header comment"
        yaml.safe_load(path.read_text())
        for i, line in enumerate(lines):
            body = line.split("#")[0].rstrip()
            if not key.match(body) or body.endswith(":"):
                continue
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"{path}:{i + 1} {line!r}"


def run_cli(tmp_path, *args, script="train.py"):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, script, *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
def test_cli_run_writes_metrics_predictions_and_checkpoints(tmp_path):
    proc = run_cli(tmp_path, "model=t5_tiny", "method=lora", "dataset=cb", "trainer.max_steps=6",
                   "trainer.eval_every=3", "trainer.batch_size=8", "dataset.max_length=64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("val/acc", "val/f1", "test/acc", "test/f1", "best_step", "trainable_params", "train_time_s"):
        assert key in metrics, key
    assert 0 <= metrics["test/acc"] <= 1 and metrics["best_step"] in (3, 6)
    rows = [json.loads(l) for l in open(tmp_path / "predictions" / "test.jsonl")]
    assert len(rows) == 56 and set(rows[0]) == {"id", "prediction", "label"}
    assert sum(r["prediction"] == r["label"] for r in rows) / 56 == pytest.approx(metrics["test/acc"])
    for ck in ("last", "best"):
        assert (tmp_path / "checkpoints" / ck / "COMPLETE").exists()
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    events = [json.loads(l)["event"] for l in open(tmp_path / "metrics.jsonl")]
    assert events.count("eval") == 2


@pytest.mark.subprocess
@pytest.mark.parametrize("override,key", [
    ("trainer.eval_mode=beam", "trainer.eval_mode"),
    ("optimizer.groups.prefix.lr=-0.1", "optimizer.groups.prefix.lr"),
    ("method.placement=middle", "method.placement"),
    ("dataset.name=nope", "dataset.name"),
])
def test_bad_config_fails_before_training_naming_the_key(tmp_path, override, key):
    proc = run_cli(tmp_path, "model=t5_tiny", "method=prefix", "dataset=cb", override)
    assert proc.returncode == 2
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.subprocess
def test_training_without_a_train_file_is_a_clear_error(tmp_path):
    proc = run_cli(tmp_path, "model=t5_tiny", "dataset=boolq")
    assert proc.returncode == 2 and "BoolQ" in proc.stderr and "train" in proc.stderr
    assert "BoolQ" not in proc.stdout and len(proc.stderr.strip().splitlines()) == 1  # said once, not logged too


@pytest.mark.subprocess
def test_hub_model_without_network_fails_in_one_line(tmp_path):
    proc = run_cli(tmp_path, "model=t5_small", "dataset=cb")
    assert proc.returncode == 2
    assert "cannot be downloaded" in proc.stderr and "model=t5_tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.subprocess
def test_mttl_grid_preset_is_offered_by_finetune_only():
    cfg = compose_cfg(["hparams_search=mttl_finetune", "pretrained=x"], config_name="finetune")
    assert list(cfg.mean_over_seeds) == [0, 1, 2]
    with pytest.raises(Exception, match="mttl_finetune"):
        compose_cfg(["hparams_search=mttl_finetune"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    help_text = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120).stdout
    assert "hparams_search: lora, prefix, prefix_routing\n" in help_text


@pytest.mark.subprocess
@pytest.mark.parametrize("args, key, closest", [
    (["trainer.max_stepz=3"], "trainer.max_stepz", "trainer.max_steps"),
    (["-m", "hparams_search=lora", "hydra.sweeper.n_trial=2"], "hydra.sweeper.n_trial", "hydra.sweeper.n_trials"),
    (["model=llama_tiny", "model.dropout=0"], "model.dropout", "model."),  # llama_tiny has no dropout key
])
def test_a_misspelled_key_is_one_line_naming_it_and_the_closest(tmp_path, args, key, closest):
    from mmpt.cli_keys import unknown_key

    err = unknown_key(ROOT / "conf", "train", args)
    assert err is not None and err.key == key and f"the closest: {closest}" in str(err)
    assert unknown_key(ROOT / "conf", "train", ["trainer.max_steps=3", "+trainer.extra=1", "model=t5_tiny",
                                                "model.dropout=0"]) is None
    # a mandatory value (`???`) is a key too: model=local's name_or_path
    assert unknown_key(ROOT / "conf", "train", ["model=local", "model.name_or_path=/some/dir"]) is None
    if args == ["trainer.max_stepz=3"]:  # the real command: one line on stderr, exit 2, no run dir
        env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        proc = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "trainer.max_stepz" in proc.stderr and "trainer.max_steps" in proc.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
def test_an_unknown_option_is_refused_before_torch_is_imported():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "train.py", "method=nosuch"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not imported & {"torch", "transformers", "optuna"}, sorted(imported)[:5]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: config error at `method`: no option 'nosuch' (expected one of: full, ia3, lora, "
                      "poly_ia3, poly_lora, prefix, prefix_routing, prompt_routing, prompt_tuning)"]
