"""Multi-task mixtures: a dataset config with `tasks: [...]` (e.g. conf/dataset/glue_superglue_mix.yaml).

Every example carries its task id (`task_id_from: task` -> the task's position in `tasks`;
`template` -> the position of its (task, promptsource template) pair). A training epoch is
`epoch_size` examples drawn with per-task rates (`mixing_rates`): proportional to the task sizes
capped at `cap` (T5's examples-proportional mixing), uniform, or proportional to size^(1/T).
Evaluation keeps the tasks apart: `val/<task>/<metric>` for each, and `val/avg` (the mean of the
tasks' main metrics) selects the model. `MixtureData` has TaskData's interface (task_data.py).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import replace
from functools import partial

import numpy as np
from torch.utils.data import DataLoader, Dataset

from mmpt.data.collate import collate, encode_choices, encode_sources
from mmpt.data.sampler import LengthBucketBatchSampler, make_loader
from mmpt.data.splits import load_splits
from mmpt.data.tasks import TASKS, get_task
from mmpt.errors import ConfigError

SAMPLINGS = ("proportional", "uniform", "temperature")


def mixing_rates(sizes, sampling: str, cap: int | None = None, temperature: float = 1.0) -> np.ndarray:
    """Share of each task in a training epoch."""
    sizes = np.asarray(sizes, dtype=float)
    if sampling == "proportional":
        weights = np.minimum(sizes, cap) if cap else sizes
    elif sampling == "uniform":
        weights = np.ones_like(sizes)
    elif sampling == "temperature":
        if not temperature or temperature <= 0:
            raise ConfigError("dataset.temperature", f"expected a positive number, got {temperature!r}")
        weights = sizes ** (1.0 / temperature)
    else:
        raise ConfigError("dataset.sampling", f"expected one of {list(SAMPLINGS)}, got {sampling!r}")
    return weights / weights.sum()


def epoch_indices(sizes, rates, n: int, seed: int, epoch: int) -> np.ndarray:
    """n indices into the concatenated tasks: each position's task drawn by `rates`, and within a
    task its examples in a fresh random order (cycled when a task is drawn more often than it has
    examples). Depends only on (seed, epoch), so a resumed run sees the same epoch."""
    rng = np.random.default_rng([seed, epoch])
    tasks = rng.choice(len(sizes), size=n, p=rates)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.empty(n, dtype=np.int64)
    for t, size in enumerate(sizes):
        where = np.flatnonzero(tasks == t)
        rounds = max(1, math.ceil(len(where) / size))
        out[where] = offsets[t] + np.concatenate([rng.permutation(size) for _ in range(rounds)])[:len(where)]
    return out


def check_tasks(names) -> list[str]:
    """The mixture's task names, refused (naming `dataset.tasks`) if one is not a known task."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError("dataset.tasks", f"unknown task {unknown[0]!r} in {list(names)}; "
                          f"expected names from {sorted(TASKS)}")
    return list(names)


def task_keys(dcfg, names=None) -> list[str]:
    """What the task ids index: task names, or "task/template" pairs (`task_id_from: template`)."""
    names = check_tasks(names or dcfg.tasks)
    by = dcfg.get("task_id_from", "task")
    if by == "task":
        return names
    if by == "template":
        if dcfg.get("format") != "promptsource":
            raise ConfigError("dataset.task_id_from", "`template` needs format: promptsource")
        from mmpt.data.templates import template_names
        return [f"{n}/{t}" for n in names for t in template_names(n)]
    raise ConfigError("dataset.task_id_from", f"expected 'task' or 'template', got {by!r}")


def tasks_of(dcfg) -> list:
    """The Task behind each task id (families with heads build one head per task): the dataset's
    task, or its mixture's tasks; [] for template ids (text-to-text backbones only, no heads)."""
    if not dcfg.get("tasks"):
        return [get_task(dcfg.name)]
    if dcfg.get("task_id_from", "task") != "task":
        return []
    return [get_task(name) for name in dcfg.tasks]


def num_tasks(dcfg) -> int:
    """How many task ids a dataset config produces (1 for a single task): routing tables need it
    before the data is tokenized."""
    return len(task_keys(dcfg)) if dcfg.get("tasks") else 1


class MixtureTask:
    """The mixture seen as one task by the engine: per-task metrics and their average."""

    def __init__(self, tasks: list):
        self.tasks = {t.name: t for t in tasks}
        self.name = "+".join(self.tasks)
        # one task (e.g. a held-out task in promptsource format): its own metric names
        self.main_metric = tasks[0].main_metric if len(tasks) == 1 else "avg"

    def choices_of(self, ex) -> list[str]:
        """The example's own answer choices (promptsource), else its task's verbalizers."""
        return getattr(ex, "choices", None) or self.tasks[ex.task].verbalizers

    def metrics(self, pred: list[int], examples: list) -> dict[str, float]:
        if len(self.tasks) == 1:
            return next(iter(self.tasks.values())).metrics(pred, examples)
        out, mains = {}, []
        for name, task in self.tasks.items():
            rows = [(p, ex) for p, ex in zip(pred, examples) if ex.task == name]
            if not rows:
                continue
            scores = task.metrics([p for p, _ in rows], [ex for _, ex in rows])
            out.update({f"{name}/{k}": v for k, v in scores.items()})
            mains.append(scores[task.main_metric])
        out["avg"] = float(np.mean(mains))
        return out


class MixedSplit(Dataset):
    """Like EncodedSplit, but each item has its own task id and answer choices."""

    def __init__(self, examples, task_ids: list[int], choices: list[list[str]], tokenizer,
                 max_length: int, max_target_length: int):
        self.examples, self.task_ids = examples, task_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.input_ids = encode_sources(tokenizer, [ex.text for ex in examples], max_length)
        self.lengths = [len(x) for x in self.input_ids]
        distinct = list(dict.fromkeys(tuple(c) for c in choices))  # encode each choice set once
        encoded = dict(zip(distinct, (encode_choices(tokenizer, list(c), max_target_length) for c in distinct)))
        self.choices = [encoded[tuple(c)] for c in choices]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "choices": self.choices[i], "label": self.examples[i].label,
                "value": self.examples[i].value, "task_id": self.task_ids[i], "index": i}


def subsample(examples: list, cap: int | None, seed: int, salt: str) -> list:
    """At most `cap` examples, a seeded random subset kept in file order. Examples that share a
    `group` (MultiRC's answer options of one question, the unit of exact match) are kept or left
    out together: whole groups are drawn, in random order, until the next one would pass the cap.
    Ungrouped examples are units of one (the same draw as sampling examples)."""
    if not cap or len(examples) <= cap:
        return examples
    units: dict = {}
    for i, ex in enumerate(examples):
        units.setdefault(i if ex.group is None else ex.group, []).append(i)
    units = list(units.values())
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    keep: list[int] = []
    for u in rng.choice(len(units), min(cap, len(units)), replace=False):
        if len(keep) + len(units[u]) > cap:
            break
        keep += units[u]
    return [examples[i] for i in sorted(keep)]


def prepare_task(name: str, dcfg, data_dir, seed: int) -> dict[str, list]:
    """One task's train / val / test (load_splits), evaluation capped, in the configured format."""
    splits = load_splits(name, data_dir, seed, dcfg.get("val_fraction", 0.1))
    for split in ("val", "test"):  # evaluation cost grows with every task: cap it
        splits[split] = subsample(splits[split], dcfg.get("max_eval_per_task"), seed, f"{name}/{split}")
    return apply_format(name, splits, dcfg, data_dir, seed)


def apply_format(name: str, splits: dict, dcfg, data_dir, seed: int) -> dict[str, list]:
    fmt = dcfg.get("format", "fixed")
    if fmt not in ("fixed", "promptsource"):
        raise ConfigError("dataset.format", f"expected 'fixed' or 'promptsource', got {fmt!r}")
    if fmt == "fixed":
        return splits
    from mmpt.data.templates import prompt_splits  # promptsource is only needed here
    return prompt_splits(name, splits, data_dir, seed)


def load_mixture(dcfg, tokenizer, tcfg, seed: int, data_dir) -> "MixtureData":
    names = check_tasks(dcfg.tasks)
    if len(set(names)) != len(names):
        raise ConfigError("dataset.tasks", f"a task is listed twice: {names}")
    return MixtureData(dcfg, {n: prepare_task(n, dcfg, data_dir, seed) for n in names}, tokenizer, tcfg, seed)


class MixtureData:
    """The splits of every task of the mixture, encoded, with mixed training batches."""

    def __init__(self, dcfg, task_splits: dict[str, dict], tokenizer, tcfg, seed: int, task_offset: int = 0):
        """task_splits: {task name: {"train", "val", "test"}} from `prepare_task` (or fine-tuning's
        k-shot splits); task ids start at task_offset (fine-tuning's new routing row)."""
        names = list(task_splits)
        self.task = MixtureTask([get_task(n) for n in names])
        self.t, self.seed, self.bucket = tcfg, seed, dcfg.get("bucket", True)
        keys = {k: i + task_offset for i, k in enumerate(task_keys(dcfg, names))}
        by_template = dcfg.get("task_id_from", "task") == "template"
        splits = {"train": [], "val": [], "test": []}
        self.sizes = []
        for name in names:
            for split, examples in task_splits[name].items():
                # ids of different tasks collide (GLUE ids are row numbers): prefix the task
                splits[split] += [replace(ex, id=f"{name}/{ex.id}") for ex in examples]
            self.sizes.append(len(task_splits[name]["train"]))
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]

        def task_id(ex):
            return keys[f"{ex.task}/{ex.template}" if by_template else ex.task]

        self.encoded = {split: MixedSplit(exs, [task_id(ex) for ex in exs], [self.task.choices_of(ex) for ex in exs],
                                          tokenizer, dcfg.max_length, dcfg.get("max_target_length", 16))
                        for split, exs in splits.items()}
        cap = dcfg.get("cap")
        self.rates = mixing_rates(self.sizes, dcfg.get("sampling", "proportional"), cap, dcfg.get("temperature", 1.0))
        size = dcfg.get("epoch_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError("dataset.epoch_size", f"expected null or an integer >= 1, got {size!r}")
        self.epoch_size = size or int(sum(min(s, cap) if cap else s for s in self.sizes))
        self.train_batches = math.ceil(self.epoch_size / tcfg.batch_size)

    def loader(self, split: str, epoch: int = 0, skip: int = 0):
        if split != "train":
            return make_loader(self.encoded[split], self.t.eval_batch_size, train=False, bucket=True, skip=skip)
        order = epoch_indices(self.sizes, self.rates, self.epoch_size, self.seed, epoch)
        lengths = self.encoded["train"].lengths
        # length bucketing over the drawn sequence; its batches are mapped back to example indices
        sampler = LengthBucketBatchSampler([lengths[i] for i in order], self.t.batch_size, shuffle=True,
                                           bucket=self.bucket, seed=self.seed)
        sampler.set_epoch(epoch)
        batches = [[int(order[j]) for j in batch] for batch in sampler.batches()]
        return DataLoader(self.encoded["train"], batch_sampler=batches[skip:], num_workers=0,
                          collate_fn=partial(collate, pad_id=self.encoded["train"].pad_id))
