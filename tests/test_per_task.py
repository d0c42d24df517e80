"""method.per_task: one prompt / prefix per task in mixed-task batches, on T5, an encoder and causal LMs."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import TINY, compose_cfg, fit_batch, toy_batch
from mmpt.data import get_task
from mmpt.engine import checkpoint
from mmpt.errors import ConfigError, MMPTError
from mmpt.export.mappings import peft_mapping
from mmpt.methods.prompt_tuning import init_tokens
from mmpt.models import build_model
from mmpt.models.backbone import load_backbone

CAUSAL = {
    "llama": dict(build="llama_tiny", name_or_path=None, tokenizer=None, d_model=32, d_ff=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_positions=128, init_std=0.2),
    "gpt2": dict(build="gpt2_tiny", name_or_path=None, tokenizer=None, d_model=32, d_ff=64, num_layers=2,
                 num_heads=4, max_positions=128, dropout=0.0, init_std=0.2),
}
METHODS = {"prompt_tuning": dict(name="prompt_tuning", num_virtual_tokens=3, init="normal"),
           "prefix": dict(name="prefix", num_virtual_tokens=2, placement="both", init_std=1.0)}
ARCHS = ("t5", "bert", "llama", "gpt2")
CHOICES = ("entailment", "not_entailment")


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir):
    return tiny_bert_dir


def make(arch, method, per_task=True, n_tasks=3, seed=0, bert_dir=None, **over):
    backbone = {"t5": TINY, "bert": {"build": "local", "name_or_path": str(bert_dir), "tokenizer": None},
                **CAUSAL}[arch]
    torch.manual_seed(seed)
    # an encoder gets one head per task; rte's two labels for each so that one batch fits all
    return build_model(OmegaConf.create(backbone), OmegaConf.create({**METHODS[method], "per_task": per_task, **over}),
                       n_tasks=n_tasks, tasks=[get_task("rte")] * n_tasks).eval()


def mixed_batch(model, task_ids=(2, 0, 1, 0)):
    texts = ("the cat sat on the mat today", "a dog", "birds fly south in the winter months", "rain again")
    batch = toy_batch(model.tokenizer, texts=texts[:len(task_ids)], choices=CHOICES,
                      labels=[i % 2 for i in range(len(task_ids))])
    batch["task_id"] = torch.tensor(task_ids)
    return batch


def single(batch, b):
    """Example b alone, its padding removed."""
    n = int(batch["attention_mask"][b].sum())
    out = {k: v[b:b + 1] for k, v in batch.items()}
    out["input_ids"], out["attention_mask"] = out["input_ids"][:, :n], out["attention_mask"][:, :n]
    return out


def table(model):
    return model.method.prompt if model.method.cfg.name == "prompt_tuning" else model.method.prefix


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ARCHS)
def test_each_example_of_a_mixed_batch_gets_its_own_tasks_prompt(arch, method, bert_dir):
    """Scores of a mixed batch = each example alone in a single-prompt model holding its task's row."""
    model = make(arch, method, bert_dir=bert_dir)
    shared = make(arch, method, per_task=False, bert_dir=bert_dir)
    rows = table(model)
    assert rows.shape[0] == 3 and rows.shape[1:] == table(shared).shape
    # the same backbone and heads, so that only the prompt / prefix can differ
    shared.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("method.")}, strict=False)
    batch = mixed_batch(model)
    scores = model.score(batch)[0]
    for b, t in enumerate(batch["task_id"].tolist()):
        with torch.no_grad():
            table(shared).copy_(rows[t])
        alone = shared.score(single(batch, b))[0]
        assert torch.allclose(scores[b:b + 1], alone, atol=1e-5), (b, t, scores[b], alone)
    # and the task id matters: example 0 under task 1's row scores otherwise
    other = dict(single(batch, 0), task_id=torch.tensor([1]))
    assert not torch.allclose(model.score(other)[0], scores[:1], atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_only_the_rows_of_the_tasks_in_the_batch(arch, method, bert_dir):
    model = make(arch, method, n_tasks=4, bert_dir=bert_dir).train()
    loss, _ = model(mixed_batch(model, task_ids=(2, 0, 2, 0)))
    loss.backward()
    grad = table(model).grad
    norms = grad.flatten(1).norm(dim=1)
    assert (norms[[0, 2]] > 0).all() and (norms[[1, 3]] == 0).all(), norms
    # the frozen backbone gets none; an encoder's heads: those of the batch's tasks
    for name, p in model.named_parameters():
        expected = name.startswith(("method.", "heads.0.", "heads.2."))
        assert (p.grad is not None) == expected, name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_round_trip_gives_identical_outputs(method, tmp_path):
    model = make("t5", method)
    batch = mixed_batch(model)
    fit_batch(model.train(), batch, lr=0.05, steps=3)
    model.eval()
    before = model.score(batch)[0]
    checkpoint.save(tmp_path / "ck", model, {"method": method})
    fresh = make("t5", method, seed=1)
    assert not torch.allclose(fresh.score(batch)[0], before)
    checkpoint.load_weights(tmp_path / "ck", fresh)
    assert torch.equal(fresh.score(batch)[0], before)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_per_task_rows_fit_two_tasks_that_one_shared_row_cannot(method):
    """The same two inputs with opposite answers in two tasks: the loss falls and per-task rows
    answer all four right; one shared row gives a text the same answer in both tasks (2 of 4).
    On the tiny Llama, whose logits are far from uniform, as in test_causal.py."""
    lr = {"prompt_tuning": 0.3, "prefix": 0.2}[method]
    for per_task in (True, False):
        model = make("llama", method, per_task=per_task, n_tasks=2).train()
        batch = toy_batch(model.tokenizer, texts=("the cat sat", "the cat sat", "a dog", "a dog"),
                          choices=("yes", "no"), labels=(0, 1, 1, 0))
        batch["task_id"] = torch.tensor([0, 1, 0, 1])
        losses = fit_batch(model, batch, lr=lr, steps=20)
        predicted = model.eval().score(batch)[0].argmax(1).tolist()
        if per_task:
            assert losses[-1] < 0.8 * losses[0], losses
            assert predicted == [0, 1, 1, 0]
        else:
            assert predicted[0] == predicted[1] and predicted[2] == predicted[3]


def test_train_on_a_two_task_mixture_with_per_task_prompts(tmp_path):
    from mmpt.recipes import train

    cfg = compose_cfg(["model=t5_tiny", "method=prompt_tuning", "method.per_task=true", "method.num_virtual_tokens=4",
                       "dataset=glue_superglue_mix", "dataset.tasks=[wnli,cb]", "dataset.max_length=32",
                       "dataset.max_eval_per_task=8", "trainer.max_steps=4", "trainer.batch_size=4"],
                      run_dir=tmp_path)
    metrics = train(cfg)
    assert "val/wnli/acc" in metrics and "val/cb/acc" in metrics
    # the best checkpoint holds one prompt per task (t5_tiny: d_model 64)
    saved = load_file(checkpoint.find(tmp_path / "checkpoints" / "best") / checkpoint.WEIGHTS)
    assert saved["method.prompt"].shape == (2, 4, 64)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_per_task_false_is_the_single_shared_row(method):
    model = make("t5", method, per_task=False)
    # the same draws as before per_task existed: seed, then the one [P, d] / [P, width] table
    torch.manual_seed(0)
    backbone, tok = load_backbone(OmegaConf.create(TINY))
    if method == "prompt_tuning":
        expected = init_tokens(3, backbone.get_input_embeddings(), "normal", tok)
    else:
        expected = torch.randn(2, 2 * 2 * 2 * 4 * 8)  # P x (4 sites * K,V * 4 heads * d_head 8)
    assert torch.equal(table(model), expected)
    batch = mixed_batch(model)
    relabelled = dict(batch, task_id=torch.tensor([0, 1, 2, 1]))
    assert torch.equal(model.score(batch)[0], model.score(relabelled)[0])  # the task id is not read
    legacy = {k: v for k, v in METHODS[method].items()}  # a run config written before the key existed
    torch.manual_seed(0)
    old = build_model(OmegaConf.create(TINY), OmegaConf.create(legacy), n_tasks=3)
    assert torch.equal(table(old), table(model))


def test_per_task_prompts_are_refused_by_the_peft_export_and_bad_values_name_the_key():
    model = make("t5", "prompt_tuning")
    with pytest.raises(MMPTError, match="one batch different prompts"):
        peft_mapping(model.method)
    with pytest.raises(MMPTError, match="one batch different prompts"):
        peft_mapping(make("t5", "prefix").method)
    assert peft_mapping(make("t5", "prompt_tuning", per_task=False).method).config["num_virtual_tokens"] == 3
    with pytest.raises(ConfigError, match=r"method\.per_task"):
        make("t5", "prefix", per_task="yes")
    with pytest.raises(ValueError, match="outside"):
        model.score(mixed_batch(model, task_ids=(0, 3)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_finetuning_a_per_task_run_on_a_new_task_points_to_the_library(method):
    """Per-task rows have none for a held-out task: refused instead of silently using task 0's."""
    from mmpt.recipes.transfer import FINETUNE_TYPES, route_new_task

    F = FINETUNE_TYPES["F"]
    assert route_new_task(make("t5", method, per_task=False).method, F, "F") == 0  # shared: as before
    with pytest.raises(ConfigError, match="library=<dir> finetune_type=routed"):
        route_new_task(make("t5", method).method, F, "F")
