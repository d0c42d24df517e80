"""Libraries of prompt and prefix experts: build from per-task and single runs, one-line refusals,
finetune_type routed (the SMoP / MMPT router over the frozen experts) and uniform (their mean)."""
import json
import zlib

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertModel

from conftest import compose_cfg, toy_batch
from mmpt.data import get_task
from mmpt.data.mixture import num_tasks
from mmpt.engine import checkpoint
from mmpt.errors import ConfigError
from mmpt.data.mixture import tasks_of as head_tasks
from conftest import load_run
from mmpt.recipes import finetune
from mmpt.library import Library
from mmpt.library.__main__ import main as cli
from mmpt.library.extract import build
from mmpt.recipes.library import prepare_library_model
from mmpt.models import build_model
from mmpt.models.backbone import load_tokenizer, minilm_dir
from test_library import experts_of

SMALL = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.dropout=0.0"]
KEYS = {"prompt_tuning": ["method.num_virtual_tokens=3", "method.init=normal"],
        "prefix": ["method.num_virtual_tokens=2"], "lora": ["method.rank=2"]}
CB = get_task("cb")


def make_run(path, method, dataset="cb", *over, model=SMALL, metrics=None):
    """A train.py run dir without the training: config, random weights in checkpoints/best, metrics.json."""
    cfg = compose_cfg([*model, f"method={method}", f"dataset={dataset}", *KEYS[method], *over], run_dir=path)
    torch.manual_seed(zlib.crc32(str(path).encode()))
    built = build_model(cfg.model, cfg.method, cfg.get("router"), n_tasks=num_tasks(cfg.dataset),
                        tasks=head_tasks(cfg.dataset))
    with torch.no_grad():
        for p in built.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    checkpoint.save(path / "checkpoints" / "best", built, {"method": cfg.method.name})
    (path / "metrics.json").write_text(json.dumps(metrics or {"optimized_metric_key": "val/acc", "val/acc": 0.5}))
    return path


def table(model):
    m = model.method
    return m.prompt if m.cfg.name == "prompt_tuning" else m.prefix


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    mix = ["dataset.tasks=[cb,rte]", "method.per_task=true"]
    scores = {"optimized_metric_key": "val/avg", "val/avg": 0.5, "val/cb/acc": 0.75, "val/rte/acc": 0.25}
    return {"mix": make_run(root / "mix", "prompt_tuning", "glue_superglue_mix", *mix, metrics=scores),
            "prefix_sweep": root / "sweep",
            "prefix_cb": make_run(root / "sweep" / "0", "prefix", "cb"),
            "prefix_rte": make_run(root / "sweep" / "1", "prefix", "rte"),
            "prompt_cb": make_run(root / "prompt_cb", "prompt_tuning", "cb")}


@pytest.fixture(scope="module")
def libs(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("libs")
    return {"prompt": Library(build(root / "prompt", [runs["mix"]])),
            "prefix": Library(build(root / "prefix", [runs["prefix_sweep"]])),
            "one_prompt": Library(build(root / "one_prompt", [runs["prompt_cb"]])),
            "one_prefix": Library(build(root / "one_prefix", [runs["prefix_cb"]]))}


def batch_for(model):
    return toy_batch(model.tokenizer, choices=CB.verbalizers, labels=(0, 1, 2))


def scores(model, batch):
    return model.eval().score(batch)[0]


def test_a_per_task_run_gives_one_prompt_expert_per_task(runs, libs, capsys):
    lib = libs["prompt"]
    assert lib.names == ["cb", "rte"] and lib.kind == "prompt" and lib.compat["length"] == 3
    _, model = load_run(runs["mix"])
    for t, name in enumerate(lib.names):
        assert torch.equal(lib.tensors(name)["prompt"], table(model)[t])
    # each expert's score is its task's own val score in the mixture run
    assert [(e["task"], e["val_metric"], e["val_score"]) for e in lib.experts] == [
        ("cb", "val/cb/acc", 0.75), ("rte", "val/rte/acc", 0.25)]
    assert cli(["show", str(lib.path)]) == 0
    out = capsys.readouterr().out
    assert "2 prompt experts" in out and ["rte", "prompt_tuning", "rte", "-", "val/rte/acc", "0.2500",
                                          str(runs["mix"].resolve())] in [line.split() for line in out.splitlines()]


def test_single_prefix_runs_give_one_prefix_expert_each(runs, libs):
    lib = libs["prefix"]
    assert lib.names == ["cb", "rte"] and lib.kind == "prefix" and lib.compat["placement"] == "both"
    for name in lib.names:
        _, model = load_run(runs[f"prefix_{name}"])
        assert torch.equal(lib.tensors(name)["prefix"], table(model))


@pytest.mark.parametrize("odd, why", [(("prefix",), "kind prefix"),
                                      (("prompt_tuning", "method.num_virtual_tokens=5"), "length 5"),
                                      (("lora",), "kind lora")])
def test_mismatched_expert_kinds_and_lengths_are_refused_in_one_line(runs, tmp_path, capsys, odd, why):
    method, *over = odd
    other = make_run(tmp_path / "odd", method, "rte", *over)
    assert cli(["build", "--out", str(tmp_path / "lib"), str(runs["prompt_cb"]), str(other), str(runs["mix"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "expert `rte" in err and str(tmp_path / "odd") in err and why in err, err
    assert not (tmp_path / "lib").exists()


def fine(lib, ftype, task=CB, **opts):
    torch.manual_seed(0)
    model, chosen = prepare_library_model(lib, ftype, experts_of(ftype, **opts), task)
    return model, chosen


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_routed_with_one_expert_is_that_experts_run(runs, libs, kind):
    """One expert: the router can only pick it (weight 1); with the masks open the output is the run's."""
    _, run = load_run(runs[f"{kind}_cb"])
    model, chosen = fine(libs[f"one_{kind}"], "routed")
    batch = batch_for(model)
    if kind == "prefix":
        assert set(chosen) == {"mask"} and model.method.router is None  # R = 1: nothing to route
        assert not torch.allclose(scores(model, batch), scores(run, batch), atol=1e-4)  # gates ~0.92
        with torch.no_grad():
            model.method.mask.fill_(40.0)  # sigmoid = 1 in float32: every gate open
    else:
        assert set(chosen) == {"router"}
    assert torch.allclose(scores(model, batch), scores(run, batch), atol=1e-5)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_uniform_is_the_mean_of_the_experts_by_hand(runs, libs, kind):
    lib = libs[kind]
    model, chosen = fine(lib, "uniform")
    assert chosen == {}  # zero-shot on T5
    method = "prompt_tuning" if kind == "prompt" else "prefix"
    _, by_hand = load_run(runs["prompt_cb" if kind == "prompt" else "prefix_cb"])
    experts = [lib.tensors(n)[kind] for n in lib.names]
    with torch.no_grad():
        table(by_hand).copy_((experts[0] + experts[1]) / 2)
    batch = batch_for(model)
    assert by_hand.method.cfg.name == method
    assert torch.allclose(scores(model, batch), scores(by_hand, batch), atol=1e-5)
    assert (lib.path / "cache" / f"uniform_{kind}.safetensors").is_file()
    # routed with a router that weighs the two experts equally (zero logits, top-2) is the mean too
    routed, _ = fine(lib, "routed", route_topk=2, adaptive_mask=False)
    with torch.no_grad():
        routed.method.router.linear.weight.zero_()
    assert torch.allclose(scores(routed, batch), scores(by_hand, batch), atol=1e-5)


@pytest.mark.parametrize("kind, trained", [("prompt", {"router"}), ("prefix", {"router", "mask"})])
def test_routed_trains_only_the_router_and_masks(libs, kind, trained):
    model, chosen = fine(libs[kind], "routed")
    assert set(chosen) == trained
    model.train()
    loss, _ = model(batch_for(model))
    loss.backward()
    owned = {id(p) for ps in chosen.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (id(p) in owned), name
    pool = model.method.experts if kind == "prompt" else model.method.pool
    assert not pool.requires_grad and "experts" not in dict(model.named_parameters())


def test_routed_on_an_encoder_trains_router_and_head(tmp_path):
    d = tmp_path / "bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
              add_pooling_layer=False).save_pretrained(d)
    load_tokenizer(minilm_dir()).save_pretrained(d)
    bert = ["model=local", f"model.name_or_path={d}"]
    lib = Library(build(tmp_path / "lib", [make_run(tmp_path / r, "prompt_tuning", r, model=bert)
                                           for r in ("cola", "sst2")]))
    model, chosen = fine(lib, "routed")
    assert set(chosen) == {"router", "head"}
    loss, _ = model.train()(batch_for(model))
    loss.backward()
    owned = {id(p) for ps in chosen.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in owned), name


@pytest.mark.parametrize("ftype", ["routed", "uniform"])
def test_finetune_with_a_prompt_library_writes_metrics(libs, tmp_path, ftype):
    cfg = compose_cfg([f"library={libs['prefix'].path}", "dataset=cb", f"finetune_type={ftype}", "k_shot=4",
                       "seed=0", "trainer.max_steps=2", "dataset.max_length=64"], config_name="finetune",
                      run_dir=tmp_path)
    metrics = finetune(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == metrics["test/acc"] and 0 <= saved["test/acc"] <= 1
    if ftype == "routed":  # which expert the router picks, by name; router + masks trained
        assert saved["test/experts/load/cb"] + saved["test/experts/load/rte"] == pytest.approx(1.0)
        assert saved["trainable_params"] == 32 * 2 + 2 * 2 * 4  # W_r [E, d]; masks [E, P, sites]
    else:
        assert saved["trainable_params"] == 0


def test_prompt_library_errors(libs, tmp_path):
    with pytest.raises(ConfigError, match="experts.route_topk"):
        fine(libs["prompt"], "routed", route_topk=3)
    with pytest.raises(ConfigError, match="experts.mask_init_std"):
        fine(libs["prefix"], "routed", mask_init_std=-1)
    with pytest.raises(ConfigError, match=r"finetune_type.*prompt experts takes one of \['routed', 'uniform'\], got 'arrow'"):
        fine(libs["prompt"], "arrow", top_k=1, temperature=1.0)
    lora = Library(build(tmp_path / "lora", [make_run(tmp_path / "run", "lora")]))
    with pytest.raises(ConfigError, match="finetune_type.*lora experts takes one of .*got 'routed'"):
        fine(lora, "routed")

