"""`python -m mmpt.library export LIB --to peft`: PEFT's create_arrow_model over the export
(examples/arrow_with_peft.py) gives the logits of finetune_type=arrow, with and without GenKnowSub."""
import functools
import importlib.util
import json

import pytest
import torch
from omegaconf import OmegaConf
from peft.tuners.lora.arrow import ArrowLoraLinearLayer

from conftest import ROOT
from mmpt.data import get_task
from mmpt.library import Library
from mmpt.library.__main__ import main as cli
from mmpt.library.peft_export import export_peft
from mmpt.recipes.library import prepare_library_model
from test_library_scale import synthetic_library

spec = importlib.util.spec_from_file_location("arrow_with_peft", ROOT / "examples" / "arrow_with_peft.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
TEXTS = ["the cat sat on the mat and looked at the dog", "birds fly south"]


def power_iterations(monkeypatch, n: int) -> None:
    """PEFT finds each prototype by 15 power iterations from a random start; more make it the exact
    top singular vector that mmpt computes (docs/differences.md gives the gap at 15)."""
    method = ArrowLoraLinearLayer.top_right_singular_vec_from_BA
    monkeypatch.setattr(ArrowLoraLinearLayer, "top_right_singular_vec_from_BA", functools.partialmethod(method, iters=n))


def mmpt_logits(lib, ids, mask, top_k, temperature, general=()):
    opts = OmegaConf.create({"top_k": top_k, "temperature": temperature, "general": list(general)})
    model, _ = prepare_library_model(lib, "arrow", opts, get_task("cb"))
    with torch.no_grad():
        return model.eval().backbone(input_ids=ids, attention_mask=mask).logits


def peft_logits(export_dir, ids, mask, top_k, temperature):
    model, _ = example.load(str(export_dir), top_k, temperature)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.fixture(scope="module", params=["llama_tiny", "gpt2_tiny"])
def library(request, tmp_path_factory):
    return synthetic_library(tmp_path_factory.mktemp(request.param) / "lib", 5, model=request.param, seed=11, std=0.5)


@pytest.mark.parametrize("general, top_k, temperature", [([], 2, 1.0), ([], 3, 0.5), (["t1", "t3"], 2, 1.0)])
def test_peft_arrow_over_the_export_gives_mmpts_logits(library, tmp_path, monkeypatch, general, top_k, temperature):
    power_iterations(monkeypatch, 300)
    out = export_peft(library, tmp_path / "peft", general)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["base_model"] + [("general_" if n in general else "task_") + n for n in library.names])
    config = json.loads((out / "task_t0" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == 2  # B is stored times alpha / r: PEFT's scaling 1
    assert config["base_model_name_or_path"] == str((out / "base_model").resolve())
    _, tok = example.load(str(out))
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    ours = mmpt_logits(library, enc.input_ids, enc.attention_mask, top_k, temperature, general)
    theirs = peft_logits(out, enc.input_ids, enc.attention_mask, top_k, temperature)
    plain = mmpt_logits(library, enc.input_ids, enc.attention_mask, 5, 1.0)  # not a trivial agreement
    assert (ours - plain).abs().max() > 1e-2
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_the_example_prints_the_next_tokens(library, tmp_path, capsys):
    out = export_peft(library, tmp_path / "peft")
    assert example.main([str(out), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(0 <= float(line.split()[-1]) <= 1 for line in lines)


def test_exports_peft_cannot_hold_are_one_line_and_write_nothing(library, tmp_path, capsys):
    copy = tmp_path / "lib"
    import shutil
    shutil.copytree(library.path, copy)
    index = json.loads((copy / "index.json").read_text())
    index["compat"]["rank"] = 3  # what an expert of another rank would look like to PEFT
    (copy / "index.json").write_text(json.dumps(index))
    assert cli(["export", str(copy), "--to", "peft", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rank" in err and not (tmp_path / "x").exists()
    assert cli(["export", str(library.path), "--to", "peft", "--out", str(tmp_path / "y"), "--general", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nosuch" in err and not (tmp_path / "y").exists()
