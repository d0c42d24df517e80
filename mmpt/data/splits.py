"""train / val / test for one task, and where the data lives.

test = the official validation set (official test sets have no labels); val = `val_fraction`
of the official train, drawn per stratum with a seeded RNG (the task's `holdout_key`: per label
for most tasks; whole passages for MultiRC, whose options are not independent; per rounded score,
i.e. label, for STS-B); train = the rest, in file order."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmpt.data.base import Example, Task
from mmpt.data.tasks import get_task
from mmpt.errors import ConfigError

ENV_DATA_DIR = "MMPT_DATA_DIR"


def resolve_data_dir(cfg_value: str | None) -> str | None:
    """Configured value, else $MMPT_DATA_DIR, else ../shared/data next to the repo root (the folder
    holding the `mmpt` package) if it exists, else None: load from the hub. "hub" forces the hub."""
    if cfg_value == "hub":
        return None
    if cfg_value:
        return str(Path(cfg_value).expanduser())
    if os.environ.get(ENV_DATA_DIR):
        return str(Path(os.environ[ENV_DATA_DIR]).expanduser())
    repo_root = Path(__file__).resolve().parents[2]
    shared = repo_root.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def holdout(task: Task, examples: list[Example], seed: int, fraction: float) -> tuple[list, list]:
    """(rest, held out): round(fraction * n) units of each stratum, chosen by a seeded RNG."""
    strata: dict = {}  # stratum -> {unit: None}, dicts keep first-seen order (deterministic)
    for ex in examples:
        stratum, unit = task.holdout_key(ex)
        strata.setdefault(stratum, {})[unit] = None
    rng = np.random.default_rng(seed)
    held: set = set()
    for stratum in sorted(strata, key=str):
        units = list(strata[stratum])
        count = round(fraction * len(units))
        held.update(units[i] for i in rng.permutation(len(units))[:count])
    rest = [ex for ex in examples if task.holdout_key(ex)[1] not in held]
    val = [ex for ex in examples if task.holdout_key(ex)[1] in held]
    return rest, val


def load_splits(task_name: str, data_dir: str | Path | None, seed: int,
                val_fraction: float = 0.1) -> dict[str, list[Example]]:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("dataset.val_fraction", f"expected a number in [0, 1), got {val_fraction!r}")
    task = get_task(task_name)
    train, val = holdout(task, task.read("train", data_dir), seed, val_fraction)
    return {"train": train, "val": val, "test": task.read("validation", data_dir)}


def kshot(splits: dict, k, seed: int) -> dict:
    """k training examples drawn with `seed`; val: as many drawn from the held-out val (all of it
    if smaller), so that model selection sees no more labels than training; test: complete."""
    if k is None:
        return splits
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(splits["train"]):
        raise ConfigError("k_shot", f"expected null or an integer in [1, {len(splits['train'])}], got {k!r}")
    rng = np.random.default_rng([seed, k])

    def draw(examples):
        return [examples[i] for i in sorted(rng.choice(len(examples), min(k, len(examples)), replace=False))]

    return {"train": draw(splits["train"]), "val": draw(splits["val"]), "test": splits["test"]}
