"""Fine-tuning pre-trained skills: each type trains exactly its parameters, routing rows, k-shot
sampling, clear checkpoint errors, and the pre-train -> fine-tune command line end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import DATA, ROOT, compose_cfg, toy_batch
from mmpt.data import load_splits
from mmpt.data.mixture import num_tasks
from mmpt.engine import checkpoint
from mmpt.data.splits import kshot
from mmpt.errors import CheckpointError, ConfigError
from mmpt.recipes.common import load_data
from mmpt.engine.evaluate import check_length_norm, predict
from mmpt.settings import evaluation
from mmpt.recipes.common import load_task
from mmpt.recipes.transfer import FINETUNE_TYPES, inherit_format, prepare_model
from mmpt.runs import open_run
from mmpt.models import build_model
from mmpt.routers.skills import Average

SMALL = ["model=t5_tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.dropout=0.0",
         "dataset=glue_superglue_mix", "dataset.tasks=[wnli,wsc,cb]", "method.rank=2"]
N_PRE = 3


def pretrained_run(path, method="poly_lora", *over, save_method=None):
    """A train.py run directory without the training: its config and a checkpoint of random skills."""
    skills = ["method.n_skills=4"] if method.startswith("poly") else []
    cfg = compose_cfg([*SMALL, f"method={method}", *skills, *over], run_dir=path)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.method, cfg.router, n_tasks=num_tasks(cfg.dataset))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    checkpoint.save(path / "checkpoints" / "best", model, {"method": save_method or cfg.method.name})
    return model


def batch(model, task_id):
    tok = model.tokenizer
    enc = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("a cat sat", "dogs run far")]
    ids = torch.tensor([e + [tok.pad_token_id] * (4 - len(e)) for e in enc])
    choices = torch.tensor([[[tok.convert_tokens_to_ids("yes"), tok.eos_token_id],
                             [tok.convert_tokens_to_ids("no"), tok.eos_token_id]]] * 2)
    return {"input_ids": ids, "attention_mask": (ids != tok.pad_token_id).long(), "labels": choices[:, 0].clone(),
            "choice_ids": choices, "choice_mask": torch.ones(2, 2, dtype=torch.bool), "label": torch.zeros(2).long(),
            "task_id": torch.full((2,), task_id), "index": torch.arange(2)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("pre")
    return path, pretrained_run(path)


def load_pretrained(path):
    return open_run(path, key="pretrained")


def fine(run, ftype):
    pre = load_pretrained(run[0])
    torch.manual_seed(1)
    return prepare_model(pre, ftype)


@pytest.mark.parametrize("ftype", [t for t in FINETUNE_TYPES.names() if t != "A"])  # A: refused on skills, below
def test_each_type_trains_exactly_its_parameters(run, ftype):
    model, task_id, chosen = fine(run, ftype)
    assert set(chosen) == set(FINETUNE_TYPES[ftype].trains or ("backbone", "adapters", "routing"))
    assert task_id == (N_PRE if ftype in ("F", "Z", "Poly") else 0)
    if ftype == "PolyRand":  # fresh B = 0 gives the routing no gradient: take one step first
        steps(model, chosen, task_id, n=1)
        model.zero_grad(set_to_none=True)
    loss, _ = model(batch(model, task_id))
    loss.backward()
    trained = {id(p) for ps in chosen.values() for p in ps}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in trained) == p.requires_grad, name
    for group, params in chosen.items():
        assert any(p.grad.abs().sum() > 0 for p in params), group
    counts = {g: sum(p.numel() for p in ps) for g, ps in chosen.items()}
    # one new row of 4 skills per adapted layer (q, k, v, o of the 2 + 2 * 2 attentions: 24)
    assert counts.get("routing", 0) == (0 if ftype == "MuZ" else 24 * 4)


def test_a_on_a_skill_checkpoint_is_refused_and_points_to_muz(run, tmp_path):
    with pytest.raises(ConfigError, match="finetune_type.*use MuZ"):
        fine(run, "A")
    pretrained_run(tmp_path / "lora", "lora")  # A on plain LoRA trains its adapters
    _, _, chosen = prepare_model(load_pretrained(tmp_path / "lora"), "A")
    assert set(chosen) == {"adapters"}


def test_f_on_a_lora_checkpoint_trains_every_parameter(tmp_path):
    pretrained_run(tmp_path / "lora", "lora")
    model, task_id, chosen = prepare_model(load_pretrained(tmp_path / "lora"), "F")
    assert set(chosen) == {"backbone", "adapters"} and task_id == 0
    trained = {id(p) for ps in chosen.values() for p in ps}
    params = dict(model.named_parameters())
    assert trained == {id(p) for p in params.values()} and all(p.requires_grad for p in params.values())
    loss, _ = model(batch(model, task_id))
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_routing_stats_describe_the_new_row_only(run):
    model, task_id, chosen = fine(run, "Poly")
    with torch.no_grad():  # the new task uses skill 0 alone; the frozen rows are random
        for row in chosen["routing"]:
            row.copy_(torch.tensor([[30.0, -30, -30, -30]]))
    stats = model.method.eval_stats([])
    assert stats["routing/effective_skills"] == pytest.approx(1.0, abs=1e-4)
    assert stats["routing/sparsity"] == pytest.approx(3 / 4)
    # every row (the heatmap's view) mixes in the pre-training tasks
    every = model.method.allocation().shape
    assert every[1] == N_PRE + 1 and model.method.allocation(trained_only=True).shape[1] == 1


def test_format_is_inherited_from_the_pretrained_run_and_plainly_overridable(tmp_path, tiny):
    pretrained_run(tmp_path / "ps", "poly_lora", "dataset.format=promptsource")
    pre = load_pretrained(tmp_path / "ps").cfg
    tok = tiny("lora").tokenizer
    over = ["dataset=cb", "k_shot=8", "seed=0"]
    cfg = compose_cfg(over, config_name="finetune")
    inherit_format(cfg, pre)
    assert cfg.dataset.format == "promptsource"
    data = load_task(cfg, tok, task_id=N_PRE)
    assert all(ex.template for ex in data.train) and set(data.encoded["train"].task_ids) == {N_PRE}
    fixed = compose_cfg([*over, "dataset.format=fixed"], config_name="finetune")  # no `+` needed
    inherit_format(fixed, pre)
    assert fixed.dataset.format == "fixed" and not hasattr(load_task(fixed, tok, 0).train[0], "template")


def test_rank_length_norm_divides_by_the_choice_tokens(tiny):
    model = tiny("lora").eval()
    tok = model.tokenizer
    texts, choices = ("the cat sat on the mat", "a dog"), ("yes", "not at all, never")
    b = toy_batch(tok, texts=texts, choices=choices, labels=(0, 1))
    plain, normed, half = model.score(b)[0], model.score(b, 1)[0], model.score(b, 0.5)[0]
    lengths = torch.tensor([len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in choices])  # + EOS
    assert lengths[1] > lengths[0]
    for i in range(2):  # by hand: the summed log-likelihood is minus the mean token loss times the tokens
        for c in range(2):
            one = {k: v[i:i + 1] for k, v in b.items()}
            one["labels"] = b["choice_ids"][i, c:c + 1]
            loss = model(one)[0]
            assert plain[i, c] == pytest.approx(-loss.item() * lengths[c].item(), rel=1e-5)
            assert normed[i, c] == pytest.approx(-loss.item(), rel=1e-5)
            assert half[i, c] == pytest.approx(-loss.item() * lengths[c].item() ** 0.5, rel=1e-5)
    preds, _, _ = predict(model, [b], lambda i: choices, length_norm=1)
    assert [preds[i] for i in range(2)] == normed.argmax(-1).tolist()
    with pytest.raises(ConfigError, match="trainer.rank_length_norm"):
        evaluation(compose_cfg(["trainer.rank_length_norm=-1"]).trainer)

    class Classifier:  # an encoder's head has no choice tokens to count
        def score(self, batch):
            return batch
    check_length_norm(Classifier(), 0)
    with pytest.raises(ConfigError, match="trainer.rank_length_norm.*classifier"):
        check_length_norm(Classifier(), 1)


def steps(model, chosen, task_id, n=3):
    opt = torch.optim.AdamW([p for ps in chosen.values() for p in ps], lr=0.05, weight_decay=0.1)
    for _ in range(n):
        loss, _ = model(batch(model, task_id))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_z_leaves_the_adapters_bit_identical(run):
    model, task_id, chosen = fine(run, "Z")
    adapters = [p.detach().clone() for p in model.method.adapter_params()]
    rows = [p.detach().clone() for p in chosen["routing"]]
    steps(model, chosen, task_id)
    assert all(torch.equal(a, p) for a, p in zip(adapters, model.method.adapter_params()))
    assert all(not torch.equal(r, p) for r, p in zip(rows, chosen["routing"]))


def test_the_new_row_is_appended_and_the_old_ones_never_move(run):
    saved = run[1]
    model, task_id, chosen = fine(run, "Poly")
    old = {k: s.logits.detach().clone() for k, s in saved.method.selectors.items()}
    steps(model, chosen, task_id)  # with weight decay, which would shrink any trainable old row
    for key, sel in model.method.selectors.items():
        assert torch.equal(sel.frozen, old[key]) and sel.logits.shape == (1, 4)
        assert sel.table(torch.arange(N_PRE + 1)).shape == (N_PRE + 1, 1, 4)
    # the pre-training tasks still route as before (adapters aside): same eval weights for task 0
    sel, ref = next(iter(model.method.selectors.values())), next(iter(saved.method.selectors.values()))
    assert torch.equal(sel.eval()(torch.tensor([0, 2])), ref.eval()(torch.tensor([0, 2])))


def test_muz_uses_the_average_and_zero_shot_scoring_too(run):
    muz, _, chosen = fine(run, "MuZ")
    assert all(isinstance(s, Average) for s in muz.method.selectors.values())
    assert "routing" not in chosen and not list(muz.method.selectors.parameters())
    poly, task_id, _ = fine(run, "Poly")
    b = batch(poly, task_id)
    with torch.no_grad():
        with poly.method.averaged():
            averaged = poly.eval().score(b)[0]
        assert torch.equal(muz.eval().score(b)[0], averaged)
        assert not torch.equal(poly.score(b)[0], averaged)  # outside the context: its own routing again


def test_polyrand_starts_from_fresh_skills(run):
    model, task_id, _ = fine(run, "PolyRand")
    assert task_id == 0 and model.method.n_tasks == 1
    assert all(p.abs().sum() == 0 for p in model.method.adapter_params()[1::2])  # every B is zero-initialised


def test_kshot_is_deterministic_per_seed():
    splits = load_splits("rte", DATA, seed=0, val_fraction=0.1)
    a, b, c = kshot(splits, 16, 0), kshot(splits, 16, 0), kshot(splits, 16, 1)
    assert [len(a[s]) for s in ("train", "val", "test")] == [16, 16, 277]
    assert [e.id for e in a["train"]] == [e.id for e in b["train"]] != [e.id for e in c["train"]]
    assert {e.id for e in a["val"]} <= {e.id for e in splits["val"]}
    assert kshot(splits, None, 0) is splits
    for bad in (0, 10**6, "16"):
        with pytest.raises(ConfigError, match="k_shot"):
            kshot(splits, bad, 0)


def test_train_k_shot_baseline_sees_the_fine_tuning_sample(tiny):
    """LoRA from scratch (train.py k_shot=...) trains and selects on exactly the examples that
    finetune.py draws for the same task and seed, so the transfer comparison is like for like."""
    tok = tiny("lora").tokenizer
    over = ["dataset=cb", "k_shot=16", "seed=3"]
    base = load_data(compose_cfg(over), tok, 3)
    fine = load_task(compose_cfg(over, config_name="finetune"), tok, task_id=0)
    for split in ("train", "val", "test"):
        assert [e.id for e in getattr(base, split)] == [e.id for e in getattr(fine, split)]
    assert len(base.train) == 16 and len(base.val) == 16 and len(base.test) == 56
    with pytest.raises(ConfigError, match="k_shot"):
        load_data(compose_cfg(["dataset=glue_superglue_mix", "k_shot=16"]), tok, 0)


def test_broken_or_mismatched_pretrained_runs_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \.hydra/config\.yaml"):
        load_pretrained(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="pretrained"):
        load_pretrained(None)
    pretrained_run(tmp_path / "a")
    (tmp_path / "a" / "checkpoints" / "best" / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoints/best"):
        load_pretrained(tmp_path / "a")
    pretrained_run(tmp_path / "b", save_method="lora")  # a checkpoint another method wrote
    with pytest.raises(CheckpointError, match="written by method `lora`"):
        prepare_model(load_pretrained(tmp_path / "b"), "Poly")
    pretrained_run(tmp_path / "c")
    cfg = OmegaConf.load(tmp_path / "c" / ".hydra" / "config.yaml")
    cfg.method.n_skills = 2  # the config no longer matches the checkpoint's shapes
    OmegaConf.save(cfg, tmp_path / "c" / ".hydra" / "config.yaml")
    with pytest.raises(CheckpointError, match=r"shape \[1, 4, .*expects \[1, 2, "):
        prepare_model(load_pretrained(tmp_path / "c"), "Poly")
    pretrained_run(tmp_path / "d", "poly_lora", "router=private", "method.n_skills=3")
    with pytest.raises(ConfigError, match="finetune_type.*router poly or moe"):
        prepare_model(load_pretrained(tmp_path / "d"), "Poly")
    pretrained_run(tmp_path / "e", "lora")
    with pytest.raises(ConfigError, match="finetune_type.*routing"):
        prepare_model(load_pretrained(tmp_path / "e"), "Z")


def cli(script, out, *args):
    env = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, script, *args, f"hydra.run.dir={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.subprocess
def test_pretrain_then_every_finetune_type_from_the_command_line(tmp_path):
    pre = cli("train.py", tmp_path / "pre", "model=t5_tiny", "method=poly_lora", "dataset=glue_superglue_mix",
              "trainer.max_steps=20", "dataset.max_length=64", "dataset.max_eval_per_task=16")
    log = pre.communicate(timeout=300)[0]
    assert pre.returncode == 0, log[-2000:]
    assert json.loads((tmp_path / "pre" / "metrics.json").read_text())["optimized_metric_key"] == "val/avg"
    common = ["dataset=rte", "k_shot=16", "seed=0", "trainer.max_steps=10", "dataset.max_length=64",
              "trainer.eval_batch_size=64", f"pretrained={tmp_path / 'pre'}"]
    types, params = [t for t in FINETUNE_TYPES.names() if t != "A"], {}
    for i in range(0, len(types), 3):  # three at a time: most of a run is start-up
        procs = {t: cli("finetune.py", tmp_path / t, f"finetune_type={t}", *common) for t in types[i:i + 3]}
        for t, proc in procs.items():
            log = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, (t, log[-2000:])
            metrics = json.loads((tmp_path / t / "metrics.json").read_text())
            assert 0 <= metrics["test/acc"] <= 1 and 0 <= metrics["zero_shot/acc"] <= 1, t
            params[t] = metrics["trainable_params"]
    assert params["Z"] < params["MuZ"] < params["Poly"] == params["PolyRand"] < params["F"]
    proc = cli("finetune.py", tmp_path / "A", "finetune_type=A", *common)  # refused before training
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "use MuZ" in log and "Traceback" not in log
    assert not (tmp_path / "A" / "metrics.json").exists()
    proc = cli("finetune.py", tmp_path / "bad", f"pretrained={tmp_path / 'nope'}", "dataset=rte")
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "no .hydra/config.yaml" in log and "Traceback" not in log
