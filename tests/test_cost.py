"""What a run cost, in metrics.json (engine/cost.py) and as columns of python -m mmpt.report."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg
from mmpt.engine import cost
from mmpt.engine.checkpoint import WEIGHTS
from mmpt.recipes import train
from mmpt.recipes.common import load_data
from mmpt.models import load_backbone
from mmpt.report import runs as report_runs
from mmpt.report.__main__ import main as report_main


def test_batch_tokens_count_attended_source_and_target_tokens():
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[5, 6, -100], [7, -100, -100]])}
    assert cost.batch_tokens(batch) == 5 + 3


def test_backbone_bytes_are_the_weights_as_loaded_quantization_constants_included():
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "llama_tiny.yaml")
    fp32, _ = load_backbone(cfg)
    assert cost.backbone_bytes(fp32) == 4 * sum(p.numel() for p in fp32.parameters())
    pytest.importorskip("bitsandbytes")
    nf4, _ = load_backbone(OmegaConf.merge(cfg, {"quantization": "nf4"}))
    # what the 4-bit model holds is what it saves: packed weights, block scales, float layers
    saved = sum(t.numel() * t.element_size() for t in nf4.state_dict().values())
    assert cost.backbone_bytes(nf4) == saved
    linears = sum(m.weight.numel() for m in fp32.modules() if isinstance(m, torch.nn.Linear) and m is not fp32.lm_head)
    assert cost.backbone_bytes(fp32) - cost.backbone_bytes(nf4) > 0.85 * 4 * linears  # ~3.5 of 4 bytes saved
    trained = {id(p) for p in fp32.lm_head.parameters()}
    assert cost.backbone_bytes(fp32, trained) == cost.backbone_bytes(fp32) - 4 * fp32.lm_head.weight.numel()


def test_a_run_records_its_cost_and_the_report_shows_it(tmp_path):
    over = ["model=llama_tiny", "method=lora", "dataset=cb", "k_shot=16", "dataset.max_length=64",
            "trainer.batch_size=8", "trainer.max_steps=2", "trainer.eval_every=2"]
    cfg = compose_cfg(over, run_dir=tmp_path / "run")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    metrics = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(isinstance(saved[k], float) and saved[k] > 0 for k in cost.KEYS)
    assert report_runs.COST == cost.KEYS
    size = (tmp_path / "run" / "checkpoints" / "best" / WEIGHTS).stat().st_size
    assert saved["adapter_mb"] == pytest.approx(size / 2 ** 20, abs=1e-4)
    # the tokens of the two training batches, over the seconds of the two steps
    data = load_data(cfg, load_backbone(cfg.model)[1], cfg.seed)
    batches = iter(data.loader("train", epoch=0))
    tokens = sum(cost.batch_tokens(next(batches)) for _ in range(2))
    # train_time_s is rounded to 10 ms in metrics.json: the rate lies between what its ends give
    t = metrics["train_time_s"]
    assert tokens / (t + 0.005) * 0.99 <= saved["train_tokens_per_s"] <= tokens / max(t - 0.005, 1e-6) * 1.01
    report_main([str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| method | task | peak_mem_mb | train_tokens_per_s | adapter_mb | backbone_mb |" in text
    row = next(line for line in text.splitlines() if line.startswith("| lora | cb |"))
    assert f"{saved['backbone_mb']:,.1f}" in row and f"{saved['peak_mem_mb']:,.1f}" in row
    csv = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert all(k in csv[0].split(",") for k in cost.KEYS)


def test_a_tied_lm_head_counts_once_in_backbone_mb():
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "gpt2_tiny.yaml")
    gpt2, _ = load_backbone(cfg)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # tied: one tensor, two modules
    unique = {id(p): p for m in gpt2.modules() for p in m.parameters(recurse=False)}
    assert cost.backbone_bytes(gpt2) == 4 * sum(p.numel() for p in unique.values())
    assert cost.backbone_bytes(gpt2) < 4 * (sum(p.numel() for p in unique.values()) + gpt2.lm_head.weight.numel())


def test_peak_mem_is_each_runs_own_not_the_process_lifetime_peak():
    cpu = torch.device("cpu")
    cost.start_run(cpu)
    big = torch.ones(300 * 2 ** 20 // 4)  # 300 MB, touched
    first = cost.peak_mem_mb(cpu)
    del big
    cost.start_run(cpu)  # the next job of a multirun, in the same process
    small = torch.ones(2 ** 20)
    second = cost.peak_mem_mb(cpu)
    del small
    assert first - second > 250, (first, second)


def test_the_report_averages_cost_over_seeds():
    import pandas as pd

    from mmpt.report.stats import group
    from mmpt.report.tables import cost as cost_table

    rows = [{"run": f"s{s}", "method": "lora", "task": "cb", "metric": "acc", "seed": s, "score": 0.5, "val": 0.5,
             "trainable_params": 10, "peak_mem_mb": mem, "train_tokens_per_s": 100.0 * (s + 1), "adapter_mb": 0.5,
             "backbone_mb": 2.0, "identity": "{}", "settings": {}, "choices": {}, "study": ""}
            for s, mem in ((0, 100.0), (1, 300.0))]
    g = group(pd.DataFrame(rows))
    assert len(g) == 1 and g.loc[0, "peak_mem_mb"] == 200.0 and g.loc[0, "train_tokens_per_s"] == 150.0
    assert "| lora | cb | 200.0 | 150.0 | 0.5 | 2 |" in cost_table(g)
