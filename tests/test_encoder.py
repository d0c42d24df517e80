"""Encoder-only backbones (BERT family, MiniLM): the same methods through the same mechanisms,
one head per task, regression for STS-B."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, toy_batch
from mmpt.data import get_task
from mmpt.errors import ConfigError
from mmpt.recipes import train
from mmpt.models import build_model
from mmpt.models.backbone import load_tokenizer

BERT_TARGETS = {"lora": r".*attention\.self\.(query|value)",
                "poly": r".*attention\.self\.(query|value)"}
METHODS = {
    "full": {"name": "full"},
    "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 4, "init": "vocab"},
    "prefix": {"name": "prefix", "num_virtual_tokens": 3, "placement": "both", "init_std": 1.0},
    "lora": {"name": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": BERT_TARGETS["lora"]},
    "prefix_routing": {"name": "prefix_routing", "num_virtual_tokens": 1, "num_virtual_tokens_full": 4,
                       "num_shared_virtual_tokens": 3, "share_type": "prepend", "topk": 1, "perturb_router": True,
                       "router_dropout": 0.0, "gumbel": False, "apply_adaptive_mask": True,
                       "apply_adaptive_subset_mask": True, "mask_init_mean": 2.5, "mask_init_std": 0.5,
                       "placement": "both"},
    "prompt_routing": {"name": "prompt_routing", "num_virtual_tokens": 2, "num_virtual_tokens_full": 6,
                       "init": "normal", "topk": 1, "perturb_router": True, "router_dropout": 0.0, "gumbel": False},
}
ROUTER = {"name": "input_topk", "topk": 1, "perturb": True, "dropout": 0.0, "gumbel": False, "gumbel_tau": 1.0}


def bert(d, method, tasks=("rte",), **model_over):
    torch.manual_seed(0)
    router = OmegaConf.create(ROUTER if "routing" in method else {"name": "none"})
    model_cfg = {"build": "local", "name_or_path": str(d), "tokenizer": None, **model_over}
    return build_model(OmegaConf.create(model_cfg),
                       OmegaConf.create(METHODS[method]), router, n_tasks=len(tasks),
                       tasks=[get_task(t) for t in tasks])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_train_on_an_encoder_and_only_their_parameters_get_gradients(tiny_bert_dir, method):
    model = bert(tiny_bert_dir, method)
    batch = toy_batch(model.tokenizer, choices=("entailment", "not_entailment"))
    groups = model.param_groups()
    assert "head" in groups and groups["head"]
    owned = {id(p) for ps in groups.values() for p in ps}
    opt = torch.optim.AdamW([p for ps in groups.values() for p in ps], lr=1e-2)
    losses = []
    for step in range(20):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for n, p in model.named_parameters():
                assert (p.grad is not None) == (id(p) in owned), n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    scores, _ = model.eval().score(batch)
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()


def test_empty_prefix_and_zero_lora_leave_the_encoder_unchanged(tiny_bert_dir):
    from mmpt.methods.prefix_attention import PrefixState

    lora, full = bert(tiny_bert_dir, "lora").eval(), bert(tiny_bert_dir, "full").eval()
    batch = toy_batch(full.tokenizer)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    stock = full.backbone(**kw).last_hidden_state
    assert torch.equal(lora.backbone(**kw).last_hidden_state, stock)
    empty = PrefixState({f"encoder.{i}": (torch.zeros(1, 4, 0, 8), torch.zeros(1, 4, 0, 8)) for i in range(2)})
    assert torch.equal(full.backbone(**kw, mmpt_prefix=empty).last_hidden_state, stock)


def test_prefix_changes_every_layer_it_is_placed_in(tiny_bert_dir):
    model = bert(tiny_bert_dir, "prefix").eval()
    batch = toy_batch(model.tokenizer)
    kw, _ = model.method.prepare(batch, model.backbone)
    with_prefix = model.backbone(**kw).last_hidden_state
    kw.pop("mmpt_prefix")
    assert not torch.allclose(with_prefix, model.backbone(**kw).last_hidden_state)
    with pytest.raises(ConfigError, match="method.placement"):
        build_model(OmegaConf.create({"build": "local", "name_or_path": str(tiny_bert_dir), "tokenizer": None}),
                    OmegaConf.create({**METHODS["prefix"], "placement": "decoder"}), tasks=[get_task("rte")])


def test_one_head_per_task_and_regression_for_stsb(tiny_bert_dir):
    model = bert(tiny_bert_dir, "lora", tasks=("rte", "stsb", "cb")).eval()
    assert [h.out_features for h in model.heads] == [2, 1, 3]
    batch = toy_batch(model.tokenizer, choices=[f"{i / 5:.1f}" for i in range(26)], labels=(10, 0, 25))
    batch["task_id"] = torch.tensor([1, 1, 1])
    batch["value"] = torch.tensor([2.07, 0.13, 4.92])  # the exact scores; labels are them rounded to 0.2
    scores, _ = model.score(batch)
    pred = model.heads[1](model._pooled(batch)[0]).squeeze(-1)
    # the nearest of 0.0, 0.2, ..., 5.0 to the regressed score wins
    assert scores.argmax(-1).tolist() == [int(torch.clamp(torch.round(p * 5), 0, 25)) for p in pred]
    loss, _ = model.train()(batch)  # MSE on the exact score
    assert loss.item() == pytest.approx(((pred - batch["value"]) ** 2).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(((pred - torch.tensor([2.0, 0.0, 5.0])) ** 2).mean().item(), rel=1e-3)


def test_stsb_batches_carry_the_exact_score(tiny_bert_dir):
    from mmpt.data import EncodedSplit, collate
    from mmpt.data.base import Example

    tok = load_tokenizer(str(tiny_bert_dir))
    stsb = get_task("stsb")
    examples = [Example("0", "a man plays a guitar", 10, value=2.07, task="stsb"),
                Example("1", "two dogs run", 24, value=4.8, task="stsb")]
    batch = collate([EncodedSplit(examples, tok, 16, stsb.verbalizers)[i] for i in (0, 1)])
    assert batch["value"].tolist() == pytest.approx([2.07, 4.8])
    assert batch["label"].tolist() == [10, 24]


def test_a_mixed_task_batch_scores_each_example_with_its_own_head(tiny_bert_dir):
    model = bert(tiny_bert_dir, "lora", tasks=("rte", "stsb", "cb")).eval()
    batch = toy_batch(model.tokenizer, choices=[f"{i / 5:.1f}" for i in range(26)], labels=(1, 10, 2))
    batch["task_id"] = torch.tensor([0, 1, 2])
    batch["value"] = torch.tensor([float("nan"), 2.07, float("nan")])
    scores, _ = model.score(batch)
    loss, _ = model(batch)
    alone = []
    for i in range(3):  # each example as a batch of one
        one = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
        s, _ = model.score(one)
        assert torch.allclose(scores[i], s[0])
        alone.append(model(one)[0])
    assert scores[0, 2:].eq(float("-inf")).all() and scores[2, 3:].eq(float("-inf")).all()
    assert loss.item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5)


def one_row(batch, i, extra_pad=0):
    """Example i of a batch as a batch of one, padded to its own length plus `extra_pad`."""
    n = int(batch["attention_mask"][i].sum())
    one = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
    pad = lambda x: torch.cat([x[:, :n], x.new_zeros(1, extra_pad)], 1)  # pad id and mask are 0 in BERT
    return {**one, "input_ids": pad(one["input_ids"]), "attention_mask": pad(one["attention_mask"])}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pool_prompt", [True, False])
def test_padding_changes_neither_the_pooled_states_nor_the_scores(tiny_bert_dir, method, pool_prompt):
    model = bert(tiny_bert_dir, method, pool_prompt=pool_prompt).eval()
    batch = toy_batch(model.tokenizer, choices=("entailment", "not_entailment"))
    assert model.tokenizer.pad_token_id == 0
    with torch.no_grad():
        pooled, _ = model._pooled(batch)
        scores, _ = model.score(batch)
        for i in range(3):
            for extra in (0, 7):  # its own length, and padded far beyond the batch's longest
                one = one_row(batch, i, extra)
                assert torch.allclose(model._pooled(one)[0][0], pooled[i], atol=1e-5), (i, extra)
                assert torch.allclose(model.score(one)[0][0], scores[i], atol=1e-5), (i, extra)


@pytest.mark.parametrize("method", ["prompt_tuning", "prompt_routing", "prefix"])
def test_pool_prompt_decides_whether_soft_prompt_positions_enter_the_mean(tiny_bert_dir, method):
    """pooled = mean of the output states over the attended positions, from the first input token
    (pool_prompt false) or from the first prepended soft token (true); prefixes prepend none."""
    batch = toy_batch(load_tokenizer(str(tiny_bert_dir)))
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = {}
    for pool in (True, False):
        model = bert(tiny_bert_dir, method, pool_prompt=pool).eval()
        with torch.no_grad():
            kw, _ = model.method.prepare(batch, model.backbone)
            h = model.backbone(**kw).last_hidden_state
            pooled[pool] = model._pooled(batch)[0]
        p = h.shape[1] - batch["input_ids"].shape[1]  # prepended positions
        assert p == {"prompt_tuning": 4, "prompt_routing": 2, "prefix": 0}[method]
        inputs = (h[:, p:] * mask).sum(1) / mask.sum(1)
        everything = (h[:, p:] * mask).sum(1) + h[:, :p].sum(1)
        expected = inputs if not pool else everything / (mask.sum(1) + p)
        assert torch.allclose(pooled[pool], expected, atol=1e-5)
    assert torch.allclose(pooled[True], pooled[False]) == (method == "prefix")
    with pytest.raises(ConfigError, match="model.pool_prompt"):
        bert(tiny_bert_dir, method, pool_prompt="no")


def test_minilm_learns_sst2_in_a_few_steps(tmp_path):
    """The real pretrained MiniLM: 60 LoRA steps on SST-2 beat the majority class on its test set."""
    cfg = compose_cfg(["model=minilm", "method=lora", "dataset=sst2", "trainer.max_steps=60", "trainer.batch_size=32",
                       "trainer.eval_every=60", "dataset.max_length=48", "optimizer.groups.adapters.lr=2e-3",
                       "optimizer.groups.head.lr=2e-3", "dataset.val_fraction=0.01"], run_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.65  # majority class: 50.9% of the 872 test sentences


@pytest.mark.slow
def test_quickstart_reaches_clearly_better_than_chance(tmp_path):
    """The README's quick start (about 2 minutes): MiniLM + LoRA on SST-2, well above the 50.9% majority."""
    metrics = train(compose_cfg(["experiment=quickstart"], run_dir=tmp_path))
    assert metrics["test/acc"] > 0.78 and metrics["val/acc"] > 0.8


@pytest.mark.parametrize("ftype", ["Poly", "Z", "MuZ"])
def test_mttl_transfer_on_an_encoder_adds_a_trained_head(tiny_bert_dir, tmp_path, ftype):
    """Skills pre-trained on two tasks, then fine-tuned on a held-out task: the new task gets its
    own head, which trains in every type; the pre-training heads stay as they were."""
    from safetensors.torch import load_file

    from mmpt.recipes import finetune

    pre = tmp_path / "pre"
    local = [f"model.name_or_path={tiny_bert_dir}", "method.target_modules='.*attention.self.(query|value)'"]
    pre_cfg = compose_cfg(["model=local", *local, "method=poly_lora", "dataset=glue_superglue_mix",
                           "dataset.tasks=[cola,sst2]", "dataset.max_eval_per_task=16", "dataset.max_length=32",
                           "method.n_skills=2", "method.rank=2", "trainer.max_steps=4", "trainer.eval_every=4"],
                          run_dir=pre)
    train(pre_cfg)
    (pre / ".hydra").mkdir()  # what Hydra writes for a command-line run
    OmegaConf.save(pre_cfg, pre / ".hydra" / "config.yaml")
    old = load_file(pre / "checkpoints/best/trainable.safetensors")
    cfg = compose_cfg([f"pretrained={pre}", "dataset=rte", f"finetune_type={ftype}", "k_shot=8", "seed=0",
                       "trainer.max_steps=3", "trainer.eval_every=3", "dataset.max_length=32",
                       "optimizer.groups.head.lr=0.1"], config_name="finetune", run_dir=tmp_path / "ft")
    metrics = finetune(cfg)
    assert "test/acc" in metrics and "zero_shot/acc" in metrics
    new = load_file(tmp_path / "ft/checkpoints/best/trainable.safetensors")
    assert {"heads.2.weight", "heads.2.bias"} <= set(new)  # the held-out task's head (ids 0, 1: cola, sst2)
    assert "heads.0.weight" not in new  # old heads frozen: not trainable, not saved
    assert {"heads.0.weight", "heads.1.weight"} <= set(old)
    adapters = [k for k in new if "lora" in k or "skill" in k]
    assert bool(adapters) == (ftype != "Z")  # Z trains routing (and the head) only
