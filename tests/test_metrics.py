"""Each task's metrics against values computed by hand (the arithmetic is in the comments)."""
import pytest

from mmpt.data.tasks import TASKS, Example


def examples(task, gold, groups=None, values=None):
    return [Example(str(i), "x", g, group=groups[i] if groups else None,
                    value=values[i] if values else None, task=task) for i, g in enumerate(gold)]


def test_metric_keys_and_main_metric_of_every_task():
    expected = {"boolq": {"acc"}, "cb": {"acc", "f1"}, "copa": {"acc"}, "multirc": {"acc", "f1a", "em"},
                "rte": {"acc"}, "wic": {"acc"}, "wsc": {"acc"}, "cola": {"acc", "mcc"}, "sst2": {"acc"},
                "mrpc": {"acc", "f1"}, "stsb": {"acc", "pearson", "spearman"}, "rte_glue": {"acc"},
                "wnli": {"acc"}}
    main = {"multirc": "f1a", "mrpc": "f1", "stsb": "pearson", "cola": "mcc"}
    assert set(TASKS) == set(expected)
    for name, task in TASKS.items():
        assert set(task.scores) == expected[name], name
        assert task.main_metric == main.get(name, "acc"), name


def test_accuracy():
    # 3 of 4 right
    assert TASKS["rte"].metrics([0, 1, 1, 0], examples("rte", [0, 1, 0, 0])) == {"acc": 0.75}


def test_cb_macro_f1():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: tp 2, fp 1, fn 0 -> P 2/3, R 1,   F1 4/5
    # class 2: tp 1, fp 0, fn 1 -> P 1,   R 1/2, F1 2/3
    # macro = (1/2 + 4/5 + 2/3) / 3 = 59/90; acc = 4/6
    out = TASKS["cb"].metrics(pred, examples("cb", gold))
    assert out["f1"] == pytest.approx(59 / 90)
    assert out["acc"] == pytest.approx(4 / 6)


def test_cb_macro_f1_counts_a_class_missing_from_gold_and_pred():
    # only classes 0 and 1 occur, both perfectly predicted; neutral (2) still counts as F1 0
    out = TASKS["cb"].metrics([0, 1], examples("cb", [0, 1]))
    assert out["f1"] == pytest.approx(2 / 3)


def test_multirc_f1a_and_em():
    # question "0-0" has 3 options, all predicted right; question "0-1" has 2, one wrong
    gold = [1, 0, 1, 0, 1]
    pred = [1, 0, 1, 1, 1]
    groups = ["0-0", "0-0", "0-0", "0-1", "0-1"]
    # F1a over all options, positive = True: tp 3, fp 1, fn 0 -> P 3/4, R 1 -> F1 = 6/7
    # EM: question 0-0 all right, 0-1 not -> 1/2; acc 4/5
    out = TASKS["multirc"].metrics(pred, examples("multirc", gold, groups=groups))
    assert out["f1a"] == pytest.approx(6 / 7)
    assert out["em"] == 0.5
    assert out["acc"] == pytest.approx(0.8)


def test_mrpc_binary_f1():
    # positive = equivalent (1): tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2; acc 2/4
    out = TASKS["mrpc"].metrics([1, 1, 0, 0], examples("mrpc", [1, 0, 1, 0]))
    assert out == {"acc": 0.5, "f1": 0.5}


def test_cola_mcc():
    # tp 1, tn 2, fp 0, fn 1 -> (1*2 - 0*1) / sqrt((1+0)(1+1)(2+0)(2+1)) = 2 / sqrt(12)
    out = TASKS["cola"].metrics([1, 0, 0, 0], examples("cola", [1, 1, 0, 0]))
    assert out["mcc"] == pytest.approx(2 / 12 ** 0.5)
    assert out["acc"] == 0.75


def test_stsb_correlations_use_verbalizer_values_and_gold_floats():
    task = TASKS["stsb"]
    assert task.verbalizers[5] == "1.0" and task.verbalizers[10] == "2.0" and task.verbalizers[15] == "3.0"
    gold_values = [1.0, 2.0, 3.0]
    # predicted [1.0, 3.0, 2.0]: deviations (-1, 1, 0) vs (-1, 0, 1) -> cov 1, var 2 and 2 -> r = 1/2;
    # the ranks are the same numbers, so spearman is 1/2 too
    out = task.metrics([5, 15, 10], examples("stsb", [5, 10, 15], values=gold_values))
    assert out["pearson"] == pytest.approx(0.5)
    assert out["spearman"] == pytest.approx(0.5)
    assert out["acc"] == pytest.approx(1 / 3)
    # gold `value` (not the rounded label) is what predictions are compared to
    out = task.metrics([5, 10, 15], examples("stsb", [5, 10, 15], values=[1.1, 1.9, 3.2]))
    assert 0.99 < out["pearson"] < 1.0


def test_stsb_constant_prediction_scores_zero_not_nan():
    out = TASKS["stsb"].metrics([5, 5, 5], examples("stsb", [5, 10, 15], values=[1.0, 2.0, 3.0]))
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0


def test_prediction_count_must_match():
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        TASKS["rte"].metrics([0, 1], examples("rte", [0, 1, 1]))
