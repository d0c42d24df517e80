"""Metric functions `fn(pred, examples, verbalizers) -> float`; a task lists the ones it reports
(`Task.scores`). `pred` are predicted verbalizer indices; gold comes from the Examples. All
formulas are scikit-learn's / scipy's."""
from __future__ import annotations

import math
from collections import defaultdict

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mmpt.data.base import Example


def _gold(examples: list[Example]) -> list[int]:
    return [ex.label for ex in examples]


def accuracy(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    return accuracy_score(_gold(examples), pred)


def macro_f1(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    # labels= fixes the class set: a class absent from a small eval set still counts (as F1 0)
    labels = list(range(len(verbalizers)))
    return f1_score(_gold(examples), pred, labels=labels, average="macro", zero_division=0)


def binary_f1(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    """F1 of the positive class, index 1 ("True" / "equivalent"); for MultiRC this is F1a."""
    return f1_score(_gold(examples), pred, pos_label=1, average="binary", zero_division=0)


def exact_match(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    """MultiRC EM: share of questions (Example.group) whose answer options are all right."""
    all_right: dict[str, bool] = defaultdict(lambda: True)
    for p, ex in zip(pred, examples):
        all_right[ex.group] &= p == ex.label
    return sum(all_right.values()) / len(all_right) if all_right else 0.0


def mcc(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    return matthews_corrcoef(_gold(examples), pred)


def _correlation(fn, pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    predicted = [float(verbalizers[p]) for p in pred]
    gold = [ex.value for ex in examples]
    if len(set(predicted)) < 2 or len(set(gold)) < 2:
        # undefined for constant input; 0 ("no correlation") keeps model selection comparable
        return 0.0
    r = fn(predicted, gold)[0]
    return 0.0 if math.isnan(r) else r


def pearson(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    return _correlation(pearsonr, pred, examples, verbalizers)


def spearman(pred: list[int], examples: list[Example], verbalizers: list[str]) -> float:
    return _correlation(spearmanr, pred, examples, verbalizers)
