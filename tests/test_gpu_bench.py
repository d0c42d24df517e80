"""bench/gpu.py: refuses in one line without a GPU; its logic at tiny shapes on CPU."""
import sys

import pytest
import torch

from conftest import ROOT
from mmpt.models.causal import LLAMA_TARGETS

sys.path.insert(0, str(ROOT))
from bench import gpu  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_in_one_line_without_a_gpu(capsys, tmp_path):
    assert gpu.main(["--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bench/gpu.py measures GPU throughput")
    assert gpu.main(["--device", "cpu", "--out", str(tmp_path / "t.md")]) == 2  # CPU: tiny shapes only
    assert not (tmp_path / "t.md").exists()


def test_tiny_run_on_cpu_measures_every_row(tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--tiny", "--methods", "lora", "prefix_routing", "--repeat", "1",
                     "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    head, body = rows[0], rows[1:]
    assert head[:3] == ["| shape", "method", "mmpt tokens/s"]
    methods = [(r[0][2:], r[1]) for r in body]
    assert methods == [("t5-tiny", "lora"), ("t5-tiny", "prefix_routing"), ("llama-tiny", "lora"),
                       ("llama-tiny", "prefix_routing"), ("t5-tiny", "prefix: achieved FLOP/s vs bf16 matmul"),
                       ("llama-tiny", "lora on an nf4 backbone (QLoRA)")]
    lora = body[0]
    assert float(lora[2].replace(",", "")) > 0 and float(lora[3].replace(",", "")) > 0  # mmpt and PEFT measured
    assert body[1][3] == "-"  # PEFT has no prefix routing
    assert body[4][2].endswith("GFLOP/s") and body[4][4].endswith("% of matmul")
    assert float(body[5][3].replace(",", "")) > 0  # PEFT's QLoRA step ran on the same nf4 backbone


def test_peft_configs_mirror_the_method_settings():
    cfg = gpu.run_cfg("llama_tiny", gpu.TINY["llama-tiny"][1], "lora")
    sets = LLAMA_TARGETS  # the family's sets: method.target_modules=lora names one
    lora = gpu.peft_config(cfg, "CAUSAL_LM", sets)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (cfg.method.rank, cfg.method.alpha, sets["lora"])
    assert gpu.peft_config(gpu.run_cfg("llama_tiny", gpu.TINY["llama-tiny"][1], "prefix_routing"), "CAUSAL_LM",
                           sets) is None
