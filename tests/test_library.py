"""Expert libraries: build / show from lora and poly_lora runs, one-line refusals, and the five
library finetune types (Arrow, uniform, TIES, weighted, library_poly) against hand computations."""
import dataclasses
import json
import shutil
import zlib

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from conftest import ROOT, compose_cfg, toy_batch
from mmpt.data import get_task
from mmpt.data.mixture import num_tasks
from mmpt.engine import checkpoint
from mmpt.errors import ConfigError
from conftest import load_run
from mmpt.recipes import finetune
from mmpt.library import Library, LibraryError
from mmpt.library import types as lib_types
from mmpt.recipes import library as lib_recipe
from mmpt.library.__main__ import main as cli
from mmpt.library.extract import build
from mmpt.library.types import arrow as arrow_type, merges as merge_types
from mmpt.library.merges import merge
from mmpt.library.methods import ArrowLinear, DeltaLinear, prototype, uniform_merge
from mmpt.models import build_model

SMALL = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.dropout=0.0"]
CB = get_task("cb")


def make_run(path, method="lora", dataset="cb", *over, score=0.5):
    """A train.py run dir without the training: config, random adapters in checkpoints/best, metrics.json."""
    extra = ["method.rank=2"] * (method in ("lora", "poly_lora")) + ["method.n_skills=3"] * (method == "poly_lora")
    cfg = compose_cfg([*SMALL, f"method={method}", f"dataset={dataset}", *extra, *over], run_dir=path)
    torch.manual_seed(zlib.crc32(str(path).encode()))
    model = build_model(cfg.model, cfg.method, cfg.get("router"), n_tasks=num_tasks(cfg.dataset))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    checkpoint.save(path / "checkpoints" / "best", model, {"method": cfg.method.name})
    (path / "metrics.json").write_text(json.dumps({"optimized_metric_key": "val/acc", "val/acc": score}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sweep = root / "multirun"  # a multirun dir: runs in numbered subdirs
    return {"cb": make_run(sweep / "0", dataset="cb", score=0.6), "rte": make_run(sweep / "1", dataset="rte"),
            "sweep": sweep, "poly": make_run(root / "poly", "poly_lora", "glue_superglue_mix",
                                             "dataset.tasks=[cb,rte]", "method.n_splits=2")}


@pytest.fixture(scope="module")
def lib(runs, tmp_path_factory):
    return Library(build(tmp_path_factory.mktemp("libs") / "lora", [runs["sweep"]]))


def lora_layers(model):
    from mmpt.methods.adapters import LoRALinear
    return {n: m for n, m in model.backbone.named_modules() if isinstance(m, LoRALinear)}


def test_build_and_show_from_lora_runs(runs, lib, capsys):
    assert lib.names == ["cb", "rte"] and lib.kind == "lora" and lib.compat["rank"] == 2
    _, model = load_run(runs["cb"])
    layers = lora_layers(model)
    assert lib.compat["targets"] == sorted(layers) and len(layers) == 12  # q, v of 6 attentions
    cb = lib.tensors("cb")
    for name, m in layers.items():  # B is stored times alpha / r: the update is B @ A
        assert torch.equal(cb[f"{name}.lora_A"], m.lora_A)
        assert torch.allclose(cb[f"{name}.lora_B"], m.scale * m.lora_B)
    row = lib.experts[0]
    assert (row["task"], row["val_metric"], row["val_score"]) == ("cb", "val/acc", 0.6)
    assert row["source"] == str(runs["cb"].resolve())
    assert cli(["show", str(lib.path)]) == 0
    out = capsys.readouterr().out
    assert "2 lora experts" in out and "rank 2" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["cb", "lora", "cb", "-", "val/acc", "0.6000", str(runs["cb"].resolve())] in lines


def test_each_skill_of_a_poly_run_is_an_expert(runs, tmp_path):
    lib = Library(build(tmp_path / "poly", [runs["poly"]]))
    assert lib.names == ["skill0", "skill1", "skill2"] and lib.compat["rank"] == 2
    _, model = load_run(runs["poly"])
    name, layer = next((n, m) for n, m in model.backbone.named_modules() if hasattr(m, "weights"))
    x = torch.randn(3, 5, layer.base.in_features)
    for s in range(3):  # every MHR split choosing skill s: the layer adds exactly the expert's B A x
        layer.weights = torch.nn.functional.one_hot(torch.tensor(s), 3).float().expand(3, 2, 3)
        t = lib.tensors(f"skill{s}")
        want = layer.base(x) + x @ t[f"{name}.lora_A"].T @ t[f"{name}.lora_B"].T
        assert torch.allclose(layer(x), want, atol=1e-5)
    layer.weights = None


@pytest.mark.parametrize("odd, why", [(["model.d_model=48"], "backbone t5_tiny (d_model=48)"),
                                      (["method.rank=3"], "rank 3"),
                                      (["method.target_modules=.*SelfAttention.q"], "targets")])
def test_mixed_experts_are_refused_in_one_line_naming_the_odd_one(runs, tmp_path, capsys, odd, why):
    other = make_run(tmp_path / "odd", "lora", "rte", *odd)
    assert cli(["build", "--out", str(tmp_path / "lib"), str(runs["cb"]), str(other), str(runs["rte"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"expert `rte` (task rte, run {tmp_path / 'odd'}) has" in err and why in err
    assert f"but expert `cb` (task cb, run {runs['cb'].resolve()}) has" in err  # the expert it differs from
    assert not (tmp_path / "lib").exists()


def test_experts_of_one_task_on_two_backbones_are_told_apart_by_their_runs(tmp_path, capsys):
    """Same task, so same name: only the run folders (both shown) tell the two experts apart."""
    a, b = make_run(tmp_path / "a", "lora", "cb"), make_run(tmp_path / "b", "lora", "cb", "model.d_model=48")
    assert cli(["build", "--out", str(tmp_path / "lib"), str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: expert `cb` (task cb, run {b}) has backbone t5_tiny (d_model=48), but expert `cb` "
                   f"(task cb, run {a}) has t5_tiny (d_model=32): a library holds experts of one backbone, "
                   "targets and rank")


def files_of(path) -> dict:
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def lib_copy(lib, tmp_path):
    return shutil.copytree(lib.path, tmp_path / "lib")


def edit_index(lib_dir, edit) -> None:
    index = json.loads((lib_dir / "index.json").read_text())
    edit(index)
    (lib_dir / "index.json").write_text(json.dumps(index))


def refused_by_show(lib_dir, capsys) -> str:
    before = files_of(lib_dir)
    assert cli(["show", str(lib_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert files_of(lib_dir) == before  # show changes nothing
    return err.strip()


def test_show_refuses_a_library_whose_expert_file_was_deleted(lib_copy, capsys):
    row = json.loads((lib_copy / "index.json").read_text())["experts"][1]
    (lib_copy / "experts" / "rte.safetensors").unlink()
    assert refused_by_show(lib_copy, capsys) == (
        f"error: library {lib_copy}: the file of expert `rte` (task rte, run {row['source']}), "
        f"{lib_copy / 'experts' / 'rte.safetensors'}, is missing; expected experts/<name>.safetensors as build "
        "wrote it; a library is written once by `python -m mmpt.library build`: rebuild it from its runs")


@pytest.mark.parametrize("edit, why", [
    (lambda i: i["experts"][0].update(name=None), "experts[0] (name None) has null as its `name`"),
    (lambda i: i["experts"][1].pop("task"), "experts[1] (name 'rte') has no `task`"),
    (lambda i: i["experts"][1].update(name="cb"), "two experts are named `cb`"),
    (lambda i: i["experts"][1].update(file="../index.json"), "has file '../index.json', outside the library"),
    (lambda i: i.pop("compat"), "`compat` is missing; expected a non-empty object"),
    (lambda i: i.update(experts=[]), "`experts` is []; expected a non-empty list"),
])
def test_a_hand_edited_index_is_refused_naming_the_file_and_field(lib_copy, capsys, edit, why):
    edit_index(lib_copy, edit)
    err = refused_by_show(lib_copy, capsys)
    assert err.startswith(f"error: {lib_copy / 'index.json'}: ") and why in err, err


def test_experts_with_other_tensors_than_the_first_are_refused(lib_copy, capsys):
    tensors = load_file(lib_copy / "experts" / "rte.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][:1]  # e.g. another rank
    save_file(tensors, lib_copy / "experts" / "rte.safetensors")
    err = refused_by_show(lib_copy, capsys)
    assert f"{lib_copy / 'experts' / 'rte.safetensors'} has `{name}` [1, " in err
    assert f"but {lib_copy / 'experts' / 'cb.safetensors'} has [2, " in err


@pytest.mark.parametrize("ftype", ["uniform", "arrow"])
def test_finetune_types_refuse_a_broken_library_before_writing(lib_copy, tmp_path, ftype):
    edit_index(lib_copy, lambda i: i["experts"][1].pop("task"))
    before = files_of(lib_copy)
    cfg = compose_cfg([f"library={lib_copy}", "dataset=cb", f"finetune_type={ftype}", "k_shot=4"],
                      config_name="finetune", run_dir=tmp_path / "run")
    with pytest.raises(LibraryError, match=r"index.json: experts\[1\] \(name 'rte'\) has no `task`"):
        finetune(cfg)
    assert not (tmp_path / "run").exists() and files_of(lib_copy) == before


def test_other_bad_sources_are_one_line_errors(runs, tmp_path):
    with pytest.raises(LibraryError, match="not empty"):
        build(runs["sweep"], [runs["cb"]])
    with pytest.raises(LibraryError, match="no train.py run"):
        build(tmp_path / "new", [tmp_path])
    ia3 = make_run(tmp_path / "ia3", "ia3")  # (prefix and prompt_tuning runs give experts: test_prompt_library.py)
    with pytest.raises(LibraryError, match="method `ia3` gives no library experts"):
        build(tmp_path / "new", [ia3])
    with pytest.raises(LibraryError, match="no index.json"):
        Library(tmp_path)


def test_arrow_prototype_is_the_top_right_singular_vector():
    torch.manual_seed(0)
    A, B = torch.randn(3, 10), torch.randn(7, 3)
    v = torch.linalg.svd(B @ A).Vh[0]
    p = prototype(A, B)
    assert torch.allclose(p.norm(), torch.tensor(1.0)) and abs(float(p @ v)) == pytest.approx(1.0, abs=1e-5)
    # a hand-made rank-1 update: B A = u w^T has right singular vector w / |w|
    p = prototype(torch.tensor([[0.0, 3.0, 4.0]]), torch.tensor([[2.0], [1.0]]))
    assert torch.allclose(p, torch.tensor([0.0, 0.6, 0.8]))


def experts_of(ftype, **over):
    """The `experts` block finetune.py composes for finetune_type=ftype (the defaults of its
    conf/finetune_type YAML), with `over` merged in (nested blocks as dicts)."""
    cfg = compose_cfg([f"finetune_type={ftype}"], config_name="finetune")
    return OmegaConf.merge(cfg.get("experts") or {}, over)


def fine(lib, ftype, **opts):
    torch.manual_seed(0)
    return lib_recipe.prepare_library_model(lib, ftype, experts_of(ftype, **opts), CB)


def test_arrow_with_one_expert_and_top_1_is_that_lora(runs, tmp_path):
    one = Library(build(tmp_path / "one", [runs["cb"]]))
    _, lora = load_run(runs["cb"])
    arrow, chosen = fine(one, "arrow", top_k=1)
    assert chosen == {} and not any(p.requires_grad for p in arrow.parameters())
    batch = toy_batch(lora.tokenizer)
    arrow.eval()
    assert torch.allclose(arrow.score(batch)[0], lora.score(batch)[0], atol=1e-5)
    assert any(isinstance(m, ArrowLinear) for m in arrow.backbone.modules())


def test_arrow_routes_each_token_to_its_top_k_by_abs_dot_product(lib):
    model, _ = fine(lib, "arrow", top_k=1, temperature=0.5)
    layer = next(m for m in model.backbone.modules() if isinstance(m, ArrowLinear))
    x = torch.randn(4, layer.base.in_features)
    w = layer.mix(x)
    best = (x @ layer.protos.T).abs().argmax(-1)
    assert torch.equal(w, torch.nn.functional.one_hot(best, 2).float())
    layer.top_k = 2  # softmax over |<x, p>| / T
    assert torch.allclose(layer.mix(x), ((x @ layer.protos.T).abs() / 0.5).softmax(-1))


def test_uniform_is_the_mean_of_the_updates(lib):
    A = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # two rank-1 experts of a [2, 2] weight
    B = torch.tensor([[[1.0], [1.0]], [[3.0], [-1.0]]])
    assert torch.allclose(uniform_merge({"m": (A, B)})["m"], torch.tensor([[0.5, 3.0], [0.5, -1.0]]))
    model, chosen = fine(lib, "uniform")
    assert chosen == {}
    cb, rte = lib.tensors("cb"), lib.tensors("rte")
    for name, m in model.backbone.named_modules():
        if isinstance(m, DeltaLinear):
            want = (cb[f"{name}.lora_B"] @ cb[f"{name}.lora_A"] + rte[f"{name}.lora_B"] @ rte[f"{name}.lora_A"]) / 2
            assert torch.allclose(m.delta, want, atol=1e-6)
            x = torch.randn(2, m.base.in_features)
            assert torch.allclose(m(x), m.base(x) + x @ want.T, atol=1e-5)


def ties_merge(stack, density, sign):
    return merge(stack, "ties", density, sign)


def test_ties_matches_a_hand_computed_merge():
    # three rank-1 updates of a [1, 4] weight: B = [[1]], A = the update's row
    rows = torch.tensor([[3.0, -1.0, 0.5, 2.0], [-2.0, 4.0, 1.0, -0.1], [1.0, -3.0, -0.2, -2.5]])
    stack = {"m": (rows[:, None, :], torch.ones(3, 1, 1))}
    # density 0.5 keeps two entries each: [3, 0, 0, 2], [-2, 4, 0, 0], [0, -3, 0, -2.5];
    # sums [1, 1, 0, -0.5] elect signs [+, +, +, -]; agreeing means: 3, 4, 0 (none), -2.5
    assert torch.allclose(ties_merge(stack, 0.5, "total")["m"], torch.tensor([[3.0, 4.0, 0.0, -2.5]]))
    # density 1 trims nothing: sums [2, 0, 1.3, -0.6] -> [+, +, +, -]: means (3+1)/2, 4, (0.5+1)/2, (-0.1-2.5)/2
    assert torch.allclose(ties_merge(stack, 1.0, "total")["m"], torch.tensor([[2.0, 4.0, 0.75, -1.3]]))
    # the elected sign of [5, -1, -1]: of the sum (total) +, of the sign count (frequency) -
    one = {"m": (torch.tensor([[[5.0]], [[-1.0]], [[-1.0]]]), torch.ones(3, 1, 1))}
    assert ties_merge(one, 1.0, "total")["m"].item() == 5.0 and ties_merge(one, 1.0, "frequency")["m"].item() == -1.0


def grads_after_one_loss(model, chosen):
    loss, _ = model(toy_batch(model.tokenizer))
    loss.backward()
    trained = {id(p) for ps in chosen.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in trained) == p.requires_grad, name
    for group, params in chosen.items():
        assert all(p.grad.abs().sum() > 0 for p in params), group


def test_weighted_trains_exactly_one_weight_per_expert(lib):
    model, chosen = fine(lib, "weighted")
    assert list(chosen) == ["routing"] and chosen["routing"][0].tolist() == [0.5, 0.5]  # starts as uniform
    grads_after_one_loss(model, chosen)
    uniform, _ = fine(lib, "uniform")  # at its start, weighted computes the uniform merge
    batch = toy_batch(model.tokenizer)
    assert torch.allclose(model.eval().score(batch)[0], uniform.eval().score(batch)[0], atol=1e-4)


def test_library_poly_trains_the_skills_and_a_fresh_row(lib):
    model, chosen = fine(lib, "library_poly")
    assert set(chosen) == {"adapters", "routing"}
    assert sum(p.numel() for p in chosen["routing"]) == 12 * 2  # a row of 2 experts per adapted layer
    name = lib.compat["targets"][0]
    layer, cb = model.backbone.get_submodule(name), lib.tensors("cb")
    assert torch.equal(layer.lora_A[0, 0].T, cb[f"{name}.lora_A"]) and layer.scale == 1.0
    assert torch.equal(layer.lora_B[0, 0].T, cb[f"{name}.lora_B"])
    grads_after_one_loss(model, chosen)


def test_prototypes_and_merges_are_cached_and_reused(lib, monkeypatch):
    first, _ = fine(lib, "arrow")
    fine(lib, "ties", density=0.5)
    assert {p.name for p in (lib.path / "cache").iterdir()} >= {"arrow_prototypes.safetensors",
                                                                 "ties_d0.5_total.safetensors"}

    def boom(*a, **kw):
        raise AssertionError("recomputed")
    monkeypatch.setattr(arrow_type, "prototypes", boom)
    monkeypatch.setattr(merge_types, "merge", boom)
    again, _ = fine(lib, "arrow")
    fine(lib, "ties", density=0.5)
    protos = [m.protos for m in again.backbone.modules() if isinstance(m, ArrowLinear)]
    assert all(torch.equal(a, b) for a, b in zip(protos, [m.protos for m in first.backbone.modules()
                                                         if isinstance(m, ArrowLinear)]))
    with pytest.raises(AssertionError, match="recomputed"):  # other options: a new cache entry
        fine(lib, "ties", density=0.3)


@pytest.mark.parametrize("ftype", lib_types.types_of("lora"))
def test_each_library_type_writes_test_metrics(lib, tmp_path, ftype):
    if ftype == "phatgoose":  # gates as `python -m mmpt.library gates` stores them (test_library_phatgoose.py trains them)
        from mmpt.library.phatgoose import GATES
        lib.cached(GATES, lambda: {m: torch.randn(len(lib.names), A.shape[-1]) for m, (A, _) in lib.lora_stack().items()})
    cfg = compose_cfg([f"library={lib.path}", "dataset=cb", f"finetune_type={ftype}", "k_shot=4", "seed=0",
                       "trainer.max_steps=1", "trainer.eval_batch_size=64", "dataset.max_length=64"],
                      config_name="finetune", run_dir=tmp_path)
    metrics = finetune(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == metrics["test/acc"] and 0 <= saved["test/acc"] <= 1
    assert saved["trainable_params"] == {"weighted": 2, "library_poly": 12 * 2 + 12 * 2 * 2 * (32 + 32)}.get(ftype, 0)
    if ftype == "arrow":  # the expert choice of every eval, and its heatmap
        choice = json.loads((tmp_path / "expert_choice.json").read_text())
        assert choice["experts"] == ["cb", "rte"] and len(choice["evals"]) == 2  # val, test
        assert (tmp_path / "expert_choice.png").stat().st_size > 0
        assert saved["test/experts/cb"] + saved["test/experts/rte"] == pytest.approx(1.0)


def test_library_config_errors(lib, tmp_path):
    over = [f"library={lib.path}", "dataset=cb", "k_shot=4"]
    with pytest.raises(ConfigError, match="finetune_type.*arrow"):
        finetune(compose_cfg([*over, "finetune_type=Poly"], config_name="finetune", run_dir=tmp_path))
    with pytest.raises(ConfigError, match="experts.top_k"):
        fine(lib, "arrow", top_k=0)
    with pytest.raises(ConfigError, match="experts.density"):
        fine(lib, "ties", density=1.5)
    assert lib_types.types_of("lora") == ["arrow", "uniform", "weighted", "library_poly", "ties", "dare_linear",
                                          "dare_ties", "magnitude_prune", "task_arithmetic", "phatgoose"]


def test_report_names_library_runs_by_type():
    from mmpt.report.runs import method_name
    assert method_name({"library": "libs/glue", "finetune_type": "ties", "dataset": {"name": "rte"}}) == "library/ties"


def shape(node) -> dict:
    """{key: its sub-shape, or None for a leaf} of an options dataclass or a composed block."""
    if dataclasses.is_dataclass(node):
        return {f.name: shape(f.type) if dataclasses.is_dataclass(f.type) else None for f in dataclasses.fields(node)}
    return {k: shape(v) if isinstance(v, dict) else None for k, v in node.items()}


def test_every_finetune_type_has_one_yaml_holding_its_options_and_their_defaults():
    """conf/finetune_type/<name>.yaml per registered type (and no other); a library type's composed
    `experts` block has exactly its dataclass's fields, the dataclass no defaults (the YAML's)."""
    from mmpt.recipes.finetune_types import FINETUNE_TYPES

    yamls = {p.stem for p in (ROOT / "conf" / "finetune_type").glob("*.yaml")}
    assert yamls == set(FINETUNE_TYPES.names()) | {name for _, name in lib_types.LIBRARY_TYPES.names()}
    for name in FINETUNE_TYPES.names():
        assert not experts_of(name)  # a transfer type has no library options
    for entry in lib_types.LIBRARY_TYPES.entries():
        block = OmegaConf.to_container(experts_of(entry.name[1]))
        assert shape(block) == (shape(entry.config) if entry.config else {}), entry.name
        for config in [entry.config] * bool(entry.config):
            stack = [config]
            while stack:
                for f in dataclasses.fields(stack.pop()):
                    assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (entry.name, f.name)
                    stack += [f.type] * dataclasses.is_dataclass(f.type)
