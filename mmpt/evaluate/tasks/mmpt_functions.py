"""The `!function` targets of mmpt's task YAMLs (lm-eval imports this file by its path)."""
from sklearn.metrics import f1_score

from mmpt.evaluate.docs import load


def _dataset(name):
    def make(**meta):
        return load(name, **meta)
    return make


boolq, cb, copa, multirc, rte, wic, wsc = map(_dataset, ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"))
cola, sst2, mrpc, stsb, rte_glue, wnli = map(_dataset, ("cola", "sst2", "mrpc", "stsb", "rte_glue", "wnli"))


def f1_macro_3(items) -> float:
    """CB: macro F1 over its three classes (a class the documents lack counts as 0), as mmpt."""
    golds, preds = zip(*items)
    return f1_score(golds, preds, labels=[0, 1, 2], average="macro", zero_division=0)


def f1_binary(items) -> float:
    """F1 of class 1 (True / equivalent): MRPC's F1 and MultiRC's F1a, as mmpt."""
    golds, preds = zip(*items)
    return f1_score(golds, preds, pos_label=1, average="binary", zero_division=0)
