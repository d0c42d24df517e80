"""Multi-task mixtures: mixing rates, the epoch sampler, task ids, per-task metrics and their average."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import DATA, compose_cfg, make_model
from mmpt.data import get_task
from mmpt.data.mixture import MixtureTask, epoch_indices, load_mixture, mixing_rates, num_tasks, task_keys
from mmpt.data.templates import template_names
from mmpt.errors import ConfigError


def test_mixing_rates_follow_their_formulas():
    sizes = [100, 1000, 10000]
    assert mixing_rates(sizes, "proportional", cap=500) == pytest.approx([100 / 1100, 500 / 1100, 500 / 1100])
    assert mixing_rates(sizes, "proportional") == pytest.approx([100 / 11100, 1000 / 11100, 10000 / 11100])
    assert mixing_rates(sizes, "uniform") == pytest.approx([1 / 3] * 3)
    root = np.sqrt(sizes)
    assert mixing_rates(sizes, "temperature", temperature=2.0) == pytest.approx(root / root.sum())
    with pytest.raises(ConfigError, match="dataset.sampling"):
        mixing_rates(sizes, "annealed")
    with pytest.raises(ConfigError, match="dataset.temperature"):
        mixing_rates(sizes, "temperature", temperature=0)


@pytest.mark.parametrize("sampling,cap,temperature", [("proportional", 300, 1.0), ("uniform", None, 1.0),
                                                      ("temperature", None, 3.0)])
def test_sampled_epochs_match_the_rates(sampling, cap, temperature):
    sizes = [50, 400, 2000]
    rates = mixing_rates(sizes, sampling, cap, temperature)
    n = 20000
    order = epoch_indices(sizes, rates, n, seed=3, epoch=0)
    task_of = np.searchsorted(np.cumsum(sizes), order, side="right")
    fractions = np.bincount(task_of, minlength=3) / n
    assert fractions == pytest.approx(rates, abs=0.01)
    # within a task, examples are drawn without replacement until all have been seen
    big = Counter(order[task_of == 2].tolist())
    assert max(big.values()) - min(big.values()) <= 1 or len(big) < sizes[2]
    assert np.array_equal(order, epoch_indices(sizes, rates, n, seed=3, epoch=0))
    assert not np.array_equal(order, epoch_indices(sizes, rates, n, seed=3, epoch=1))


def test_mixture_task_reports_each_task_and_the_average_of_main_metrics():
    cola, wsc = get_task("cola"), get_task("wsc")
    mix = MixtureTask([cola, wsc])
    examples = [cola.read("validation", DATA)[i] for i in range(6)] + wsc.read("validation", DATA)[:4]
    pred = [1, 1, 0, 1, 0, 1, 0, 0, 1, 1]
    metrics = mix.metrics(pred, examples)
    c, w = cola.metrics(pred[:6], examples[:6]), wsc.metrics(pred[6:], examples[6:])
    assert metrics == {"cola/acc": c["acc"], "cola/mcc": c["mcc"], "wsc/acc": w["acc"],
                       "avg": pytest.approx((c["mcc"] + w["acc"]) / 2)}
    assert mix.main_metric == "avg" and MixtureTask([wsc]).main_metric == "acc"


def small_mix(*over):
    cfg = compose_cfg(["dataset=glue_superglue_mix", "dataset.tasks=[wnli,wsc,cb]", "dataset.max_length=32",
                       "dataset.max_eval_per_task=20", "trainer.batch_size=8", *over])
    model = make_model("full")
    return cfg, load_mixture(cfg.dataset, model.tokenizer, cfg.trainer, cfg.seed, str(DATA))


def test_mixture_data_tags_task_ids_caps_eval_and_mixes_batches():
    cfg, data = small_mix("dataset.cap=100")
    assert data.sizes == [572, 498, 224]  # 90% of each train file (10% is val)
    assert data.epoch_size == 300 and data.train_batches == math.ceil(300 / 8)
    assert [len([e for e in data.val if e.task == t]) for t in ("wnli", "wsc", "cb")] == [20, 20, 20]
    assert len({e.id for e in data.train}) == len(data.train)  # ids are prefixed with their task
    ids = {e.task: data.encoded["train"].task_ids[i] for i, e in enumerate(data.train)}
    assert ids == {"wnli": 0, "wsc": 1, "cb": 2}
    batches = list(data.loader("train", epoch=0))
    assert len(batches) == data.train_batches
    seen = torch.cat([b["task_id"] for b in batches])
    assert set(seen.tolist()) == {0, 1, 2} and len(seen) == 300
    assert any(len(b["task_id"].unique()) > 1 for b in batches)
    cb = next(b for b in batches if (b["task_id"] == 2).any())
    assert cb["choice_mask"][cb["task_id"] == 2].sum(-1).eq(3).all()  # CB has 3 verbalizers, the others 2
    again = list(data.loader("train", epoch=0, skip=2))
    assert torch.equal(again[0]["input_ids"], batches[2]["input_ids"])


def test_promptsource_mixture_with_template_task_ids():
    cfg, data = small_mix("dataset.format=promptsource", "dataset.task_id_from=template")
    keys = task_keys(cfg.dataset)
    assert num_tasks(cfg.dataset) == len(keys) == sum(len(template_names(t)) for t in ("wnli", "wsc", "cb"))
    own_choices = 0
    for i in range(0, len(data.train), 37):
        ex, item = data.train[i], data.encoded["train"][i]
        assert keys[item["task_id"]] == f"{ex.task}/{ex.template}"
        assert data.task.choices_of(ex) is ex.choices and len(item["choices"]) == len(ex.choices)
        own_choices += ex.choices != get_task(ex.task).verbalizers  # e.g. Yes / No / Maybe for CB
    assert own_choices > 0
    with pytest.raises(ConfigError, match="dataset.task_id_from"):
        task_keys(OmegaConf.create({"tasks": ["cb"], "format": "fixed", "task_id_from": "template"}))


def test_train_on_a_mixture_logs_per_task_metrics(tmp_path):
    from mmpt.recipes import train

    cfg = compose_cfg(["model=t5_tiny", "method=poly_lora", "dataset=glue_superglue_mix",
                       "dataset.tasks=[wnli,cb]", "dataset.max_length=32", "dataset.max_eval_per_task=8",
                       "trainer.max_steps=3", "trainer.batch_size=4", "method.n_skills=2", "method.rank=2"],
                      run_dir=tmp_path)
    metrics = train(cfg)
    for key in ("val/wnli/acc", "val/cb/acc", "val/cb/f1", "val/avg", "test/avg", "val/routing/effective_skills"):
        assert key in metrics, key
    main = get_task("cb").main_metric
    assert metrics["val/avg"] == pytest.approx((metrics["val/wnli/acc"] + metrics[f"val/cb/{main}"]) / 2)
    assert metrics["optimized_metric_key"] == "val/avg"
    assert (tmp_path / "routing_heatmap.png").exists()


def test_capped_evaluation_keeps_every_multirc_question_whole():
    """max_eval_per_task draws whole MultiRC questions (exact match needs all of a question's
    answers); ungrouped tasks still get exactly the cap."""
    from mmpt.data.mixture import prepare_task
    from mmpt.data.splits import load_splits

    dcfg = OmegaConf.create({"max_eval_per_task": 100, "val_fraction": 0.1})
    full, capped = load_splits("multirc", DATA, 0, 0.1), prepare_task("multirc", dcfg, DATA, 0)
    for split in ("val", "test"):
        answers = Counter(ex.group for ex in full[split])
        sample = Counter(ex.group for ex in capped[split])
        assert {g: answers[g] for g in sample} == dict(sample), split  # every drawn question complete
        assert 100 - max(answers.values()) < sum(sample.values()) <= 100 and len(sample) >= 10
    cb = prepare_task("cb", OmegaConf.create({"max_eval_per_task": 20, "val_fraction": 0.1}), DATA, 0)
    assert len(cb["val"]) == len(cb["test"]) == 20
