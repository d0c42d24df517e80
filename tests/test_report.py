"""python -m mmpt.report: grouping by config identity, CIs and paired tests against hand-computed
numbers, numeric csv, learning curves, sweep trials apart, routing heatmap row names."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from mmpt.report.__main__ import main as report_main
from mmpt.report.heatmap import routing_heatmap, task_names
from mmpt.report.plots import read_curve
from mmpt.report.runs import collect
from mmpt.report.stats import compare, group


def cfg(method="lora", task="rte", seed=0, **over):
    c = {"seed": seed, "resume": False, "task_name": "train", "paths": {"output_dir": "x"},
         "logger": {"name": "local"}, "trainer": {"max_steps": 6, "eval_every": 3, "log_every": 10},
         "model": {"build": "t5_tiny"}, "dataset": {"name": task}, "method": {"name": method}}
    for key, v in over.items():  # "method__rank": 4 -> c["method"]["rank"] = 4
        *path, last = key.split("__")
        d = c
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return c


def fake_run(d, config, score, params=100, key="val/acc", curve=(), hydra=None):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if hydra is not None:
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    write_metrics(d, score, params, key, curve)


def write_metrics(d, score, params=100, key="val/acc", curve=()):
    test_key = "test/" + key.split("/", 1)[1]
    (d / "metrics.json").write_text(json.dumps({key: score - 0.1, test_key: score, "optimized_metric_key": key,
                                                "trainable_params": params}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"event": "eval", "step": s, key: v}) + "\n"
                                             for s, v in curve))


def rows(tmp_path, baseline=None):
    runs, _ = collect(tmp_path)
    g = group(runs)
    g = compare(g, baseline) if baseline else g
    return {(r["label"], r["task"]): r for r in g.to_dict("records")}


def grid(tmp_path):
    """lora r8 (3 seeds), lora r4 (2 seeds, in a subfolder) and prefix (3 seeds) on rte."""
    for seed, s in enumerate((0.70, 0.80, 0.90)):
        fake_run(tmp_path / f"r8_{seed}", cfg("lora", seed=seed, method__rank=8), s, params=1000)
    for seed, s in enumerate((0.60, 0.64)):
        fake_run(tmp_path / "rank4" / str(seed), cfg("lora", seed=seed, method__rank=4), s, params=500)
    for seed, s in enumerate((0.65, 0.70, 0.78)):
        fake_run(tmp_path / f"p_{seed}", cfg("prefix", seed=seed), s, params=20)


def test_runs_with_different_settings_are_not_pooled_and_ci_is_by_hand(tmp_path):
    grid(tmp_path)
    r = rows(tmp_path)
    assert set(r) == {("lora (method.rank=4)", "rte"), ("lora (method.rank=8)", "rte"), ("prefix", "rte")}
    r8 = r["lora (method.rank=8)", "rte"]
    assert r8["n"] == 3 and r8["seeds"] == "0 1 2" and r8["trainable_params"] == 1000
    assert r8["mean"] == pytest.approx(80.0) and r8["std"] == pytest.approx(10.0)  # sample std, ddof=1
    # t quantile of df=2 in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)); a = 2 * 0.975 - 1
    a = 0.95
    half = a * math.sqrt(2 / (1 - a * a)) * 10.0 / math.sqrt(3)  # 4.3027 * s / sqrt(n)
    assert (r8["ci95_low"], r8["ci95_high"]) == pytest.approx((80.0 - half, 80.0 + half))
    r4 = r["lora (method.rank=4)", "rte"]
    assert r4["n"] == 2 and r4["mean"] == pytest.approx(62.0) and r4["trainable_params"] == 500


def test_paired_test_against_the_baseline_by_hand(tmp_path):
    grid(tmp_path)
    fake_run(tmp_path / "cb_p", cfg("prefix", "cb", seed=0), 0.5)
    fake_run(tmp_path / "cb_l", cfg("lora", "cb", seed=0, method__rank=8), 0.6)
    r = rows(tmp_path, baseline="prefix")
    # lora r8 - prefix per seed: 5, 10, 12 -> mean 9, sd sqrt(13); df=2: p = 1 - t / sqrt(2 + t^2)
    t = 9 / (math.sqrt(13) / math.sqrt(3))
    r8 = r["lora (method.rank=8)", "rte"]
    assert r8["baseline"] == "prefix" and r8["n_paired"] == 3
    assert r8["delta"] == pytest.approx(9.0) and r8["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    # lora r4 - prefix over seeds 0, 1 only: -5, -6 -> t = -5.5 / 0.5 = -11; df=1 (Cauchy)
    r4 = r["lora (method.rank=4)", "rte"]
    assert r4["n_paired"] == 2 and r4["delta"] == pytest.approx(-5.5)
    assert r4["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(11))
    # one shared seed: a delta but no test
    cb = r["lora (method.rank=8)", "cb"]
    assert cb["n_paired"] == 1 and cb["delta"] == pytest.approx(10.0) and math.isnan(cb["p_value"])
    assert math.isnan(r["prefix", "cb"]["ci95_low"])  # n = 1: no interval
    assert math.isnan(r["prefix", "rte"]["p_value"]) and r["prefix", "rte"]["baseline"] == ""


def test_a_task_the_baseline_did_not_run_is_not_labelled_baseline(tmp_path, capsys):
    grid(tmp_path)
    fake_run(tmp_path / "cb_l", cfg("lora", "cb", seed=0, method__rank=8), 0.6)
    assert report_main([str(tmp_path), "--baseline", "prefix"]) == 0
    table = capsys.readouterr().out.split("## Paired comparison")[1]
    assert "| lora (method.rank=8) | no baseline run | +9.0 (p=0.050, n=3) |" in table
    assert "| prefix | - | baseline |" in table


def test_report_files_numeric_csv_and_marks(tmp_path, capsys):
    grid(tmp_path)
    (tmp_path / "dead" / ".hydra").mkdir(parents=True)
    (tmp_path / "dead" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg()))
    assert report_main([str(tmp_path), "--baseline", "prefix"]) == 0
    df = pd.read_csv(tmp_path / "report.csv")
    assert len(df) == 3 and df["n"].max() == 3
    for c in ("mean", "std", "n", "ci95_low", "ci95_high", "p_value", "delta", "trainable_params"):
        assert pd.api.types.is_numeric_dtype(df[c]), c
    assert df["trainable_params"].dtype == np.int64
    md = (tmp_path / "report.md").read_text()
    assert md == capsys.readouterr().out
    assert "| rte (acc) |" in md and "1 incomplete runs ignored" in md
    assert "| lora (method.rank=8) | 80.0 ± 10.0 [55.2, 104.8] (3) | 80.0 | 1,000 |" in md  # p = 0.0495
    assert "| lora (method.rank=4) | 62.0 ± 2.8 [36.6, 87.4] (2) † |" in md  # t(1) = 12.71; p = 0.058: marked
    assert "-5.5 (p=0.058, n=2) †" in md and "+9.0 (p=0.050, n=3) |" in md
    for f in ("report.png", "learning_curves.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"
    assert report_main([str(tmp_path), "--baseline", "lora"]) == 2  # two lora rows: ambiguous


def test_run_control_keys_do_not_split_groups_but_results_keys_do(tmp_path):
    fake_run(tmp_path / "a", cfg(seed=0), 0.5)
    fake_run(tmp_path / "b", cfg(seed=1, resume=True, paths__output_dir="elsewhere", trainer__log_every=1,
                                 logger__name="wandb", logger__project="p"), 0.7)
    fake_run(tmp_path / "c", cfg(seed=2, trainer__eval_every=100), 0.9)  # picks other checkpoints
    fake_run(tmp_path / "d", cfg(seed=0, model__build="minilm"), 0.4)
    r = rows(tmp_path)
    assert r["lora (model.build=t5_tiny, trainer.eval_every=3)", "rte"]["n"] == 2
    assert r["lora (model.build=t5_tiny, trainer.eval_every=100)", "rte"]["n"] == 1
    assert r["lora (model.build=minilm, trainer.eval_every=3)", "rte"]["mean"] == pytest.approx(40.0)


def test_seed_subruns_count_as_their_seeds(tmp_path):
    parent = tmp_path / "trial"
    fake_run(parent, cfg(seed=42, mean_over_seeds=[0, 1]), 0.5)
    for seed, s in ((0, 0.6), (1, 0.8)):
        (parent / f"seed_{seed}").mkdir()
        write_metrics(parent / f"seed_{seed}", s)
    r = rows(tmp_path)
    assert r["lora", "rte"]["seeds"] == "0 1" and r["lora", "rte"]["mean"] == pytest.approx(70.0)


def finetune_cfg(pre, ftype, seed):
    return {"pretrained": str(pre), "finetune_type": ftype, "k_shot": 16, "seed": seed,
            "dataset": {"name": "rte"}, "trainer": {"max_steps": 6}}


def test_finetune_identity_is_the_pretrained_config_not_its_path(tmp_path):
    pre = cfg("poly_lora", "glue_mix", method__n_skills=8)
    for name in ("pre_a", "pre_b"):  # the same pre-training twice, in two folders
        fake_run(tmp_path / "pre" / name, pre, 0.5)
    fake_run(tmp_path / "pre" / "pre_c", cfg("poly_lora", "glue_mix", method__n_skills=4), 0.5)
    ft = tmp_path / "ft"
    launched = {"runtime": {"cwd": str(tmp_path / "pre")}}  # relative `pretrained` paths: to finetune.py's cwd
    fake_run(ft / "0", finetune_cfg("pre_a", "Z", 0), 0.6, hydra=launched)
    fake_run(ft / "1", finetune_cfg(tmp_path / "pre" / "pre_b", "Z", 1), 0.8)
    fake_run(ft / "2", finetune_cfg("pre_c", "Z", 0), 0.3, hydra=launched)
    fake_run(ft / "3", finetune_cfg("pre_a", "Poly", 0), 0.7, hydra=launched)
    r = rows(ft)
    assert r["poly_lora/Z (pretrained.method.n_skills=8)", "rte"]["n"] == 2
    assert r["poly_lora/Z (pretrained.method.n_skills=8)", "rte"]["mean"] == pytest.approx(70.0)
    assert r["poly_lora/Z (pretrained.method.n_skills=4)", "rte"]["n"] == 1
    assert r["poly_lora/Poly", "rte"]["n"] == 1


def test_sweep_trials_get_their_own_table(tmp_path):
    optuna = {"mode": "MULTIRUN", "sweeper": {"_target_": "hydra_plugins.x.OptunaSweeper", "study_name": "s"}}
    for i, lr in enumerate((1e-3, 1e-4, 1e-3)):  # trial 2 repeats trial 0's setting with another seed
        fake_run(tmp_path / "study" / str(i), cfg(seed=i, optimizer__lr=lr), 0.2 + 0.1 * i, hydra=optuna)
    grid_hydra = {"mode": "MULTIRUN", "sweeper": {"_target_": "hydra._internal.BasicSweeper"}}
    fake_run(tmp_path / "grid" / "0", cfg("prefix", seed=0), 0.5, hydra=grid_hydra)
    runs, _ = collect(tmp_path)
    g = group(runs)
    trials = g[g["study"] == "s (study)"].set_index("label")
    assert trials.loc["lora (optimizer.lr=0.001)", "n"] == 2
    assert trials.loc["lora (optimizer.lr=0.001)", "mean"] == pytest.approx(30.0)
    assert trials.loc["lora (optimizer.lr=0.0001)", "n"] == 1
    assert list(g.loc[g["study"] == "", "label"]) == ["prefix"]
    assert report_main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Search trials: s (study)" in md and md.index("| prefix |") < md.index("## Search trials")


def test_learning_curve_reads_eval_events_last_wins(tmp_path):
    write_metrics(tmp_path, 0.5, curve=((3, 0.2), (6, 0.4), (6, 0.5)))  # step 6 repeated after a resume
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "train", "step": 9, "train/loss": 1.0}) + "\n")
    assert read_curve(tmp_path / "metrics.jsonl", "val/acc").to_dict() == {3: 0.2, 6: 0.5}


def test_routing_heatmap_rows_are_task_names(tmp_path):
    pre = tmp_path / "pre"
    (pre / ".hydra").mkdir(parents=True)
    (pre / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"dataset": {"name": "mix", "tasks": ["sst2", "mrpc"]}}))
    assert task_names(pre, 2) == ["sst2", "mrpc"]
    ft = tmp_path / "ft"
    (ft / ".hydra").mkdir(parents=True)
    (ft / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"pretrained": str(pre), "dataset": {"name": "rte"}}))
    (ft / "seed_0").mkdir()
    assert task_names(ft / "seed_0", 3) == ["sst2", "mrpc", "rte"]  # a new routing row (Poly, Z)
    assert task_names(ft, 1) == ["rte"]  # PolyRand
    assert task_names(tmp_path / "nowhere", 2) == ["task 0", "task 1"]
    path = routing_heatmap(np.full((3, 4), 0.25), ["sst2", "mrpc", "rte"], tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_seed_run_twice_counts_once_in_the_paired_test(tmp_path):
    for name, seed, s in (("a", 0, 0.5), ("b", 0, 0.7), ("c", 1, 0.8)):
        fake_run(tmp_path / name, cfg(seed=seed), s)
    for seed, s in ((0, 0.5), (1, 0.6)):
        fake_run(tmp_path / f"p{seed}", cfg("prefix", seed=seed), s)
    lora = rows(tmp_path, baseline="prefix")["lora", "rte"]
    assert lora["n"] == 3 and lora["mean"] == pytest.approx(200 / 3)
    # per seed: lora {0: 60, 1: 80} - prefix {0: 50, 1: 60} = 10, 20 -> t = 15 / (sqrt(50) / sqrt(2)) = 3
    assert lora["n_paired"] == 2 and lora["delta"] == pytest.approx(15.0)
    assert lora["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(3))
    assert report_main([str(tmp_path), "--baseline", "prefix"]) == 0
    assert "Seeds run more than once" in (tmp_path / "report.md").read_text()


def test_a_differing_config_group_is_named_by_its_choice_unless_that_is_ambiguous(tmp_path):
    def run(name, model, **over):
        fake_run(tmp_path / name, cfg(model__build=model, **over), 0.5,
                 hydra={"runtime": {"choices": {"model": model, "method": "lora"}}})
    run("a", "t5_tiny", model__d_model=32)
    run("b", "minilm", model__hidden=384)
    assert set(rows(tmp_path)) == {("lora (model=t5_tiny)", "rte"), ("lora (model=minilm)", "rte")}
    run("c", "t5_tiny", model__d_model=64)  # model=t5_tiny no longer tells a and c apart
    assert {label for label, _ in rows(tmp_path)} == {
        "lora (model.build=t5_tiny, model.d_model=32, model.hidden=-)",
        "lora (model.build=t5_tiny, model.d_model=64, model.hidden=-)",
        "lora (model.build=minilm, model.d_model=-, model.hidden=384)"}


def test_several_folders_make_one_report(tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    for seed, (a, b) in enumerate(((0.70, 0.60), (0.80, 0.65), (0.90, 0.70))):
        fake_run(new / str(seed), cfg("lora", seed=seed), a)  # same sub-folder names in both roots
        fake_run(old / str(seed), cfg("prefix", seed=seed), b)
    assert report_main([str(new), str(old), "--baseline", "prefix"]) == 2  # where to write: --out
    assert "--out" in capsys.readouterr().err
    assert report_main([str(new), str(old), "--baseline", "prefix", "--out", str(tmp_path / "rep")]) == 0
    df = pd.read_csv(tmp_path / "rep" / "report.csv").set_index("method")
    assert df.loc["lora", "n"] == 3 and df.loc["prefix", "n"] == 3
    # per seed: 10, 15, 20 -> mean 15, sd 5; df = 2
    t = 15 / (5 / math.sqrt(3))
    assert df.loc["lora", "delta"] == pytest.approx(15.0)
    assert df.loc["lora", "p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert "6 finished runs" in (tmp_path / "rep" / "report.md").read_text()


def _overrides_run(d, model, quant, score, seed=0, regex="q|v"):
    """A run of a sweep over backbones: its config holds a long key with `|` (a target regex).
    (Not under model.targets: old runs' blocks there are dropped when settings are compared.)"""
    hydra = {"mode": "MULTIRUN", "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
             "runtime": {"choices": {"model": model, "method": "lora"}},
             "overrides": {"task": [f"model={model}", f"model.quantization={quant}", "method=lora", "dataset=cb",
                                    f"hydra.sweep.dir=x", f"seed={seed}"]}}
    fake_run(d, cfg(task="cb", seed=seed, model__build=model, model__quantization=quant,
                    method__target_modules=f"(.*{model}.*\\.({regex}))" * 12), score, hydra=hydra)


def test_labels_name_the_overrides_and_table_cells_keep_their_columns(tmp_path):
    import re

    from PIL import Image

    for i, (model, quant) in enumerate([(m, q) for m in ("t5_tiny", "llama_tiny") for q in ("none", "nf4")]):
        _overrides_run(tmp_path / str(i), model, quant, 0.5 + 0.05 * i)
    labels = {label for label, _ in rows(tmp_path)}
    assert labels == {f"lora (model={m}, model.quantization={q})" for m in ("t5_tiny", "llama_tiny")
                      for q in ("none", "nf4")}
    # a label the overrides do not tell apart falls back to the settings, cut at 120 characters
    _overrides_run(tmp_path / "4", "t5_tiny", "none", 0.7, regex="k|o")
    assert max(len(label) for label, _ in rows(tmp_path)) <= 120
    assert report_main([str(tmp_path)]) == 0
    header = None
    for line in (tmp_path / "report.md").read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip().strip("|")))
        header = cells if header is None else header
        assert cells == header, line  # every row has its table header's cells
    assert "\\|" in (tmp_path / "report.md").read_text()
    for png in ("report.png", "learning_curves.png"):
        assert Image.open(tmp_path / png).size[0] <= 2400


def test_forty_runs_keep_figures_readable_and_trials_carry_their_number(tmp_path):
    from PIL import Image

    optuna = {"mode": "MULTIRUN", "sweeper": {"_target_": "hydra_plugins.x.OptunaSweeper", "study_name": "s"}}
    for i in range(40):
        hydra = {**optuna, "sweeper": {**optuna["sweeper"], "trial": i},
                 "overrides": {"task": [f"optimizer.lr={1e-4 * (i + 1):.4g}", f"method.rank={i % 7 + 1}"]}}
        fake_run(tmp_path / str(i), cfg(seed=0, optimizer__lr=1e-4 * (i + 1), method__rank=i % 7 + 1),
                 0.3 + 0.01 * i, hydra=hydra, curve=((3, 0.2), (6, 0.3 + 0.01 * i)))
    assert report_main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Search trials: s\n" in md and "(.)" not in md and "`.`" not in md
    first = next(line for line in md.splitlines() if line.startswith("| 39 |"))  # the best val first
    assert "lora (optimizer.lr=0.004, method.rank=5)" in first.replace("method.rank=5, optimizer.lr=0.004",
                                                                       "optimizer.lr=0.004, method.rank=5")
    df = pd.read_csv(tmp_path / "report.csv")
    assert sorted(df["trial"].astype(int)) == list(range(40))
    for png in ("report.png", "learning_curves.png"):
        w, h = Image.open(tmp_path / png).size
        assert w <= 2400 and h <= 12000, (png, w, h)
