"""python -m mmpt.evaluate on mmpt's own tasks: lm-eval's choice is the run's prediction on every
example, for every method on llama_tiny, gpt2_tiny and t5_tiny (CB, prompts truncated at 48
tokens); its accuracy and macro-F1 are the run's test metrics."""
import json

import pytest
import torch

from evaluate_helpers import METHODS, MODELS, lls, mmpt_scores, runs, samples  # noqa: F401  (runs: a fixture)
from mmpt.data.tasks import get_task
from mmpt.evaluate.__main__ import main
from mmpt.runs import load_model, open_run


def model_max_length(run):
    from omegaconf import OmegaConf

    return OmegaConf.load(run / ".hydra" / "config.yaml").dataset.max_length


def agree(run, task="mmpt_cb", dataset="cb"):
    verbalizers = get_task(dataset).verbalizers
    preds = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    rows = samples(run, task)
    assert [r["doc_id"] for r in rows] == list(range(len(preds)))
    assert [r["doc"]["id"] for r in rows] == [p["id"] for p in preds]  # predictions/test.jsonl's order
    chosen = [max(range(len(verbalizers)), key=lambda c: lls(r)[c]) for r in rows]
    assert chosen == [verbalizers.index(p["prediction"]) for p in preds]
    # and the scores themselves: a 2-step tiny model may choose one class whatever its routing
    model = load_model(open_run(run))
    own = mmpt_scores(model, dataset, len(rows), 0, model_max_length(run))
    assert (torch.tensor([lls(r) for r in rows]) - own).abs().max() < 1e-4
    res = json.loads((run / "eval" / "results.json").read_text())["results"][task]
    metrics = json.loads((run / "metrics.json").read_text())
    assert res["acc,none"] == pytest.approx(metrics["test/acc"], abs=1e-12)
    if dataset == "cb":
        assert res["f1,none"] == pytest.approx(metrics["test/f1"], abs=1e-12)


@pytest.mark.parametrize("backbone", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_lm_eval_choices_are_the_runs_predictions(runs, backbone, method, capsys):
    run = runs(backbone, method)
    assert main([str(run), "--tasks", "mmpt_cb", "--log-samples", "--batch-size", "8"]) == 0
    agree(run)
    assert "mmpt_cb" in capsys.readouterr().out  # lm-eval's table
