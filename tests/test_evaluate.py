"""python -m mmpt.evaluate on mmpt's own tasks: lm-eval's choice is the run's prediction on every
example, for every method on llama_tiny, gpt2_tiny and t5_tiny (CB, prompts truncated at 48
tokens); its accuracy and macro-F1 are the run's test metrics."""
import pytest

from evaluate_helpers import METHODS, MODELS, agree, runs  # noqa: F401  (runs: a fixture)
from mmpt.evaluate.__main__ import main


@pytest.mark.parametrize("backbone", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_lm_eval_choices_are_the_runs_predictions(runs, backbone, method, capsys):
    run = runs(backbone, method)
    assert main([str(run), "--tasks", "mmpt_cb", "--log-samples", "--batch-size", "8"]) == 0
    agree(run)
    assert "mmpt_cb" in capsys.readouterr().out  # lm-eval's table
