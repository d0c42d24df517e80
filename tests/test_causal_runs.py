"""Causal LMs run exactly like T5 through the rest of the suite: every router of the routed methods,
fine-tuning (all six types) from a pre-trained llama_tiny skills run, a promptsource mixture, a
`-m` sweep and an exact resume after a kill. Model-level tests: tests/test_causal.py."""
import json
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import ROOT, compose_cfg
from mmpt.errors import ConfigError
from mmpt.recipes import train
from mmpt.recipes import finetune
from mmpt.recipes.transfer import FINETUNE_TYPES
from mmpt.models import build_model
from test_causal import batch_for
from test_resume import ENV, assert_same_run, finish, run, start

SMALL = ["model.d_model=32", "model.d_ff=64", "dataset.max_length=32"]


def routed(arch, method, *over):
    cfg = compose_cfg([f"model={arch}", f"method={method}", *SMALL, *over])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.method, cfg.router, n_tasks=2)
    with torch.no_grad():  # fresh LoRA B = 0 would give A and the routing no gradient
        for p in model.method.param_groups().get("adapters", []):
            p.normal_(0, 0.3)
    return model


INPUT_ROUTERS = [[], ["method.topk=2"], ["router.gumbel=true"], ["method.perturb_router=false"]]


@pytest.mark.parametrize("arch", ["llama_tiny", "gpt2_tiny"])
@pytest.mark.parametrize("method", ["prefix_routing", "prompt_routing"])
@pytest.mark.parametrize("over", INPUT_ROUTERS, ids=["top1", "top2", "gumbel", "dropout"])
def test_input_routers_train_exactly_their_groups(arch, method, over):
    model = routed(arch, method, *over)
    batch = batch_for(model)
    loss, aux = model(batch)
    loss.backward()
    groups = {g: ps for g, ps in model.param_groups().items() if ps}
    assert set(groups) == ({"shared_embedding", "mask", "router"} if method == "prefix_routing" else {"prompt", "router"})
    owned = {id(p) for ps in groups.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in owned), name
    for g, ps in groups.items():
        assert all(p.grad.abs().sum() > 0 for p in ps), g
    scores, _ = model.eval().score(batch)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all()


# llama_tiny, skills on every Linear of its 2 blocks: 4 attention + 3 MLP projections each
SELECTORS = {"finegrained": 14, "coarsegrained": 1, "coderwise": 1, "blockwise": 2, "layerwise": 4}


@pytest.mark.parametrize("router,granularity", [("poly", g) for g in SELECTORS] +
                         [(r, "blockwise") for r in ("moe", "average", "private")])
def test_skill_routers_at_every_granularity_on_llama(router, granularity):
    model = routed("llama_tiny", "poly_lora", f"router={router}", f"router.granularity={granularity}",
                   "method.n_skills=2", "method.rank=2", "method.target_modules=${model.targets.poly_ffn}",
                   *(["method.n_skills=3", "router.top_k=2"] if router == "moe" else []))
    learns = router in ("poly", "moe")  # average and private have nothing to learn
    assert len(model.method.selectors) == SELECTORS[granularity]
    batch = batch_for(model)
    batch["task_id"] = torch.tensor([0, 1, 1])
    loss, _ = model(batch)
    loss.backward()
    groups = {g: ps for g, ps in model.param_groups().items() if ps}
    assert set(groups) == ({"adapters", "routing"} if learns else {"adapters"})
    owned = {id(p) for ps in groups.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in owned), name
    for g, ps in groups.items():
        assert all(p.grad.abs().sum() > 0 for p in ps), g
    scores, _ = model.eval().score(batch)
    assert torch.isfinite(scores).all()


def test_blockwise_names_the_blocks_of_both_families():
    llama = routed("llama_tiny", "poly_lora", "router.granularity=layerwise", "method.n_skills=2",
                   "method.target_modules=${model.targets.poly_ffn}")
    gpt2 = routed("gpt2_tiny", "poly_lora", "router.granularity=blockwise", "method.n_skills=2")
    assert sorted(llama.method.selectors) == [f"model_layers_{i}_{s}" for i in (0, 1) for s in ("mlp", "self_attn")]
    assert sorted(gpt2.method.selectors) == ["transformer_h_0", "transformer_h_1"]


PRE = ["model=llama_tiny", *SMALL, "method=poly_lora", "dataset=glue_superglue_mix", "dataset.tasks=[wnli,wsc]",
       "dataset.max_eval_per_task=16", "method.n_skills=2", "method.rank=2", "trainer.max_steps=4",
       "trainer.eval_every=4", "trainer.batch_size=8"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A llama_tiny poly_lora run on two tasks, with the `.hydra/` a command-line run writes."""
    path = tmp_path_factory.mktemp("pre")
    cfg = compose_cfg(PRE, run_dir=path)
    metrics = train(cfg)
    assert "test/wsc/acc" in metrics
    (path / ".hydra").mkdir()
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    return path


def kinds(weights: dict) -> set:
    """What a checkpoint holds: skills (lora_A/B), routing logits, backbone weights."""
    kind = lambda k: "adapters" if "lora_" in k else "routing" if "selectors" in k else "backbone"
    return {kind(k) for k in weights}


@pytest.mark.parametrize("ftype", FINETUNE_TYPES.names())
def test_finetune_every_type_from_a_llama_skills_run(pretrained, tmp_path, ftype):
    cfg = compose_cfg([f"pretrained={pretrained}", "dataset=cb", f"finetune_type={ftype}", "k_shot=8", "seed=0",
                       "dataset.max_length=32", "trainer.max_steps=2", "trainer.eval_every=2"],
                      config_name="finetune", run_dir=tmp_path)
    if ftype == "A":  # as on T5: A on a skills checkpoint is refused, naming the types to use
        with pytest.raises(ConfigError, match="finetune_type.*use MuZ"):
            finetune(cfg)
        return
    metrics = finetune(cfg)
    assert {"test/acc", "test/f1", "zero_shot/acc"} <= set(metrics)
    new = load_file(tmp_path / "checkpoints/best/trainable.safetensors")
    want = {"F": {"adapters", "routing", "backbone"}, "Z": {"routing"}, "MuZ": {"adapters"},
            "PolyRand": {"adapters", "routing"}, "Poly": {"adapters", "routing"}}[ftype]
    assert kinds(new) == want
    old = load_file(pretrained / "checkpoints/best/trainable.safetensors")
    if "routing" in want and ftype != "PolyRand":  # one new row for the new task (id 2), old rows frozen
        assert all(v.shape[0] == 1 for k, v in new.items() if "selectors" in k)
    if ftype in ("Poly", "MuZ"):  # the loaded skills trained on from the pre-trained values
        for k in (k for k in new if "lora_B" in k):
            assert new[k].shape == old[k].shape and not torch.equal(new[k], old[k]), k
    rows = [json.loads(line) for line in open(tmp_path / "predictions" / "test.jsonl")]
    assert len(rows) == 56 and {r["prediction"] for r in rows} <= {"entailment", "contradiction", "neutral"}


def test_promptsource_mixture_on_llama_with_template_routing(tmp_path):
    cfg = compose_cfg(["model=llama_tiny", *SMALL, "method=poly_lora", "dataset=glue_superglue_mix",
                       "dataset.tasks=[wnli,cb]", "dataset.format=promptsource", "dataset.task_id_from=template",
                       "dataset.max_eval_per_task=8", "method.n_skills=2", "method.rank=2", "trainer.max_steps=3",
                       "trainer.batch_size=4"], run_dir=tmp_path)
    metrics = train(cfg)
    for key in ("val/wnli/acc", "val/cb/acc", "val/avg", "test/avg"):
        assert key in metrics, key
    rows = [json.loads(line) for line in open(tmp_path / "predictions" / "val.jsonl")]
    assert len(rows) == 16 and {r["id"].split("/")[0] for r in rows} == {"wnli", "cb"}


@pytest.mark.subprocess
@pytest.mark.sweep
def test_sweep_over_two_values_on_llama(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "-m", "model=llama_tiny", *SMALL, "method=lora", "dataset=cb",
                           "trainer.max_steps=2", "trainer.eval_every=2", "method.rank=2,4",
                           f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job, rank in ((0, 2), (1, 4)):
        run_dir = tmp_path / str(job)
        assert f"method.rank={rank}" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
        weights = load_file(run_dir / "checkpoints/best/trainable.safetensors")
        assert {v.shape for k, v in weights.items() if "lora_A" in k} == {(rank, 32)}


# cb: 224 examples, 14 batches of 16 per epoch; evals and checkpoints at 3, 6, 7 (epoch end), 9
RESUME = ["model=llama_tiny", *SMALL, "method=prefix_routing", "dataset=cb", "trainer.batch_size=16",
          "trainer.eval_batch_size=64", "trainer.max_steps=9", "trainer.eval_every=3", "trainer.log_every=1", "seed=3"]


@pytest.mark.subprocess
def test_llama_killed_mid_epoch_equals_uninterrupted(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = start("train.py", full, RESUME)
    run("train.py", cut, RESUME, kill_at="step:5")  # resumes at step 3 (epoch 0, batch 3)
    run("train.py", cut, RESUME, resume=True)
    finish(reference)
    assert_same_run(full, cut)
