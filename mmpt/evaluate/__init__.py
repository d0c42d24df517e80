"""Every run scored by lm-evaluation-harness (python -m mmpt.evaluate; docs/evaluation.md).

lm.py: `MmptLM`, an lm_eval model over a finished run; scoring.py: batched shared-context scoring;
load.py: the run's model (or its backbone alone) and the task whose routing it uses; docs.py and
tasks/: lm-eval task YAMLs of mmpt's datasets; results.py: RUN_DIR/eval/. lm_eval itself is the
`eval` extra: this package imports it only in lm.py and __main__.py.
"""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
