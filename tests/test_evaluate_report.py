"""python -m mmpt.report reads python -m mmpt.evaluate's files: a column per evaluated task (mean,
std and 95% CI over seeds, by hand) and the forgetting column; blanks where a row was not evaluated."""
import json

import yaml
from scipy import stats

from mmpt.report.__main__ import main as report_main


def fake_run(d, method, seed, evaluated=None, base=None):
    """A finished run folder (config, metrics) with eval/results.json and eval/base_results.json."""
    cfg = {"seed": seed, "model": {"build": "t5_tiny"}, "dataset": {"name": "rte"}, "method": {"name": method},
           "trainer": {"max_steps": 6}}
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.json").write_text(json.dumps({"val/acc": 0.5, "test/acc": 0.6, "optimized_metric_key": "val/acc"}))
    for name, scores in (("results.json", evaluated), ("base_results.json", base)):
        if scores:
            (d / "eval").mkdir(exist_ok=True)
            (d / "eval" / name).write_text(json.dumps({"results": {
                t: {"alias": t, "acc,none": v, "acc_stderr,none": 0.01} for t, v in scores.items()}}))


def table(text):
    part = text.split("## Evaluated with lm-evaluation-harness")[1]
    rows = [line for line in part.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    return {r.split("|")[1].strip(): dict(zip(head, (c.strip() for c in r.strip("|").split("|")))) for r in rows[1:]}


def test_evaluated_tasks_and_forgetting_columns(tmp_path, capsys):
    lora = [0.50, 0.60, 0.70]
    for seed, acc in enumerate(lora):
        fake_run(tmp_path / f"lora{seed}", "lora", seed, {"arc_easy": acc, "mmpt_cb": 0.4}, {"arc_easy": 0.45})
    fake_run(tmp_path / "ia3", "ia3", 0, {"mmpt_cb": 0.25})  # never scored on arc_easy
    assert report_main([str(tmp_path)]) == 0
    t = table((tmp_path / "report.md").read_text())
    low, high = stats.t.interval(0.95, 2, loc=60, scale=10 / 3 ** 0.5)
    assert t["lora"]["arc_easy (acc)"] == f"60.0 ± 10.0 [{low:.1f}, {high:.1f}] (3)"
    assert t["lora"]["mmpt_cb (acc)"] == "40.0 ± 0.0 [40.0, 40.0] (3)"
    low, high = stats.t.interval(0.95, 2, loc=15, scale=10 / 3 ** 0.5)
    assert t["lora"]["arc_easy forgetting"] == f"15.0 ± 10.0 [{low:.1f}, {high:.1f}] (3)"
    assert t["ia3"]["arc_easy (acc)"] == "" and t["ia3"]["arc_easy forgetting"] == ""
    assert t["ia3"]["mmpt_cb (acc)"] == "25.0 (1)"


def test_no_evaluated_run_no_section(tmp_path, capsys):
    fake_run(tmp_path / "a", "lora", 0)
    assert report_main([str(tmp_path)]) == 0
    assert "lm-evaluation-harness" not in (tmp_path / "report.md").read_text()
