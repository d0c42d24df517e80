"""GenKnowSub (mmpt/library/gks.py): experts.general with finetune_type=arrow."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg
from mmpt.cli_keys import unknown_key
from mmpt.data import get_task
from mmpt.errors import ConfigError
from mmpt.library.gks import subtract
from mmpt.library.methods import ArrowLinear, prototype
from mmpt.recipes import finetune
from mmpt.recipes.library import prepare_library_model
from test_library_scale import synthetic_library


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return synthetic_library(tmp_path_factory.mktemp("gks") / "lib", 4, model="t5_tiny", seed=5)


def test_subtract_takes_the_general_mean_of_a_and_b_once():
    A = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]], [[5.0, 4.0]]])   # [E=3, r=1, d_in=2]
    B = torch.tensor([[[1.0]], [[-1.0]], [[2.0]]])                # [E=3, d_out=1, r=1]
    names, out = subtract({"m": (A, B)}, ["a", "b", "c"], ["b", "c"])
    assert names == ["a"]
    # general mean: A (4, 2), B 0.5; expert a: A (1-4, 2-2) = (-3, 0), B 1 - 0.5
    assert torch.equal(out["m"][0], torch.tensor([[[-3.0, 0.0]]])) and torch.equal(out["m"][1], torch.tensor([[[0.5]]]))


def test_arrow_with_general_experts_routes_the_task_experts_minus_their_mean(lib):
    opts = OmegaConf.create({"top_k": 2, "temperature": 1.0, "general": ["t1", "t2"]})  # arrow's whole block
    model, _ = prepare_library_model(lib, "arrow", opts, get_task("cb"))
    assert model.method.expert_names == ["t0", "t3"]
    stack = lib.lora_stack()
    for name, layer in model.backbone.named_modules():
        if isinstance(layer, ArrowLinear):
            A, B = stack[name]
            gA, gB = (A[1] + A[2]) / 2, (B[1] + B[2]) / 2
            assert torch.allclose(layer.A, torch.stack([A[0] - gA, A[3] - gA]), atol=1e-6)
            assert torch.allclose(layer.B, torch.stack([B[0] - gB, B[3] - gB]), atol=1e-6)
            assert abs(float(layer.protos[1] @ prototype(A[3] - gA, B[3] - gB))) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("ftype, general, why", [("ties", "[t1]", "finetune_type=arrow"),
                                                 ("arrow", "[nosuch]", "'nosuch' is not an expert"),
                                                 ("arrow", "[t0,t1,t2,t3]", "no task expert")])
def test_bad_general_experts_are_refused_before_the_run_dir(lib, tmp_path, ftype, general, why):
    # ties has no experts.general (the command line refuses it: below); ++ forces it in
    key = "experts.general" if ftype == "arrow" else "++experts.general"
    cfg = compose_cfg([f"library={lib.path}", "dataset=cb", f"finetune_type={ftype}", f"{key}={general}"],
                      config_name="finetune", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="experts.general") as e:
        finetune(cfg)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_general_experts_with_another_type_are_refused_on_the_command_line_naming_arrow():
    """Before Hydra composes (finetune.py's refuse_unknown_keys): arrow's option, not a misspelling."""
    err = unknown_key(ROOT / "conf", "finetune", ["library=LIB", "finetune_type=ties", "experts.general=[t1]"])
    assert err.key == "experts.general" and "not an option of finetune_type=ties; it is one of finetune_type=arrow" in str(err)
    err = unknown_key(ROOT / "conf", "finetune", ["-m", "finetune_type=arrow,ties", "experts.top_k=2"])
    assert err.key == "experts.top_k" and "finetune_type=ties (swept)" in str(err) and "++experts.top_k=" in str(err)
    assert unknown_key(ROOT / "conf", "finetune", ["finetune_type=arrow", "experts.general=[t1]"]) is None
