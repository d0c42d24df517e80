"""PEFT's merges as library types (mmpt/library/merges.py, types/merges.py): each equals
peft.utils.merge_utils' function on the same tensors (the same DARE masks) within 1e-6."""
import pytest
import torch
from peft.utils import merge_utils

from mmpt.errors import ConfigError
from mmpt.library import types as lib_types
from mmpt.library.registry import own_options
from mmpt.library.types.merges import MergeTypeOptions, merge_options
from mmpt.library.merges import MERGES, merge
from mmpt.library.methods import DeltaLinear
from test_library import experts_of, fine, lib, runs  # noqa: F401  (fixtures)


def stack_of(seed=0, E=3, r=2, shapes=((5, 4), (3, 6))):
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}": (torch.randn(E, r, d_in, generator=g), torch.randn(E, d_out, r, generator=g))
            for i, (d_out, d_in) in enumerate(shapes)}


def peft_call(name, tensors, weights, density, sign):
    """PEFT's function itself, with the arguments its signature takes."""
    fn = getattr(merge_utils, name)
    if name == "task_arithmetic":
        return fn(tensors, weights)
    if name in ("dare_linear", "magnitude_prune"):
        return fn(tensors, weights, density)
    return fn(tensors, weights, density, sign)


@pytest.mark.parametrize("sign", ["total", "frequency"])
@pytest.mark.parametrize("name", list(MERGES))
def test_delta_space_is_peft_on_the_updates(name, sign):
    stack = stack_of()
    ours = merge(stack, name, density=0.4, majority_sign=sign, weight=0.7, seed=5)
    torch.manual_seed(5)  # the same stream of DARE masks: modules in order
    for m, (A, B) in stack.items():
        deltas = list(torch.einsum("eor,eri->eoi", B.double(), A.double()))
        want = peft_call(name, deltas, torch.full((3,), 0.7, dtype=torch.float64), 0.4, sign)
        assert torch.allclose(ours[m].double(), want, atol=1e-6), (name, m)


@pytest.mark.parametrize("name", list(MERGES))
def test_factor_space_is_peft_add_weighted_adapter_on_a_and_b(name):
    stack = stack_of(1)
    ours = merge(stack, name, density=0.5, weight=-0.5, space="factors", seed=3)
    torch.manual_seed(3)
    w = torch.full((3,), -0.5, dtype=torch.float64)
    root = w.abs().sqrt()
    for m, (A, B) in stack.items():  # A (weights with their sign) before B, as PEFT draws DARE's masks
        merged_A = peft_call(name, list(A.double()), root * w.sign(), 0.5, "total")
        merged_B = peft_call(name, list(B.double()), root, 0.5, "total")
        assert torch.allclose(ours[m].double(), merged_B @ merged_A, atol=1e-6), (name, m)


def test_dare_masks_follow_the_seed_and_leave_the_global_rng_alone():
    stack = stack_of(2)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = merge(stack, "dare_ties", density=0.5, seed=1)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is where it was
    b, c = merge(stack, "dare_ties", density=0.5, seed=1), merge(stack, "dare_ties", density=0.5, seed=2)
    assert all(torch.equal(a[m], b[m]) for m in a) and not all(torch.equal(a[m], c[m]) for m in a)


def test_each_merge_type_applies_its_merged_update(lib):  # noqa: F811
    for name in MERGES:
        model, chosen = fine(lib, name, density=0.5, merge={"seed": 7})
        assert chosen == {}
        want = merge(lib.lora_stack(), name, density=0.5, seed=7)
        layers = {n: m for n, m in model.backbone.named_modules() if isinstance(m, DeltaLinear)}
        assert set(layers) == set(lib.compat["targets"])
        for n, m in layers.items():
            assert torch.allclose(m.delta, want[n], atol=1e-6), (name, n)
    assert set(MERGES) <= set(lib_types.types_of("lora")) and "phatgoose" in lib_types.types_of("lora")


@pytest.mark.parametrize("opts, key", [({"density": 0.0}, "experts.density"), ({"density": 1.5}, "experts.density"),
                                       ({"majority_sign": "max"}, "experts.majority_sign"),
                                       ({"merge": {"space": "weights"}}, "experts.merge.space"),
                                       ({"merge": {"seed": "x"}}, "experts.merge.seed")])
def test_bad_merge_options_are_one_line_naming_the_key(opts, key):
    with pytest.raises(ConfigError) as e:
        merge_options(own_options(MergeTypeOptions, experts_of("dare_ties", **opts)), "dare_ties")
    assert e.value.key == key
    assert "\n" not in str(e.value)


def test_an_unknown_merge_is_refused_listing_the_merges():
    with pytest.raises(ConfigError, match="dare_ties"):
        merge_options(own_options(MergeTypeOptions, experts_of("ties")), "dare_mean")


def test_bad_merge_options_are_refused_before_the_run_dir(lib, tmp_path):  # noqa: F811
    from conftest import compose_cfg
    from mmpt.recipes import finetune
    cfg = compose_cfg([f"library={lib.path}", "dataset=cb", "finetune_type=dare_ties", "experts.density=1.5"],
                      config_name="finetune", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="experts.density"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()
