"""Behaviour that "the loss drops" tests cannot see, checked against hand computations on
realistic inputs (random non-zero biases, padded rows): the input router's top-k, the encoder's
mean pooling over attended positions, and the merged export's fold of an adapted layer."""
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmpt.data import get_task
from mmpt.export.merged import fold
from mmpt.methods.adapters import LoRALinear
from mmpt.models import build_model
from mmpt.routers.input_router import InputRouter


def padded_embeddings(b=8, s=12, d=16, seed=0):
    """[B, S, d] embeddings and a mask of rows of different lengths (row 0 full, the rest padded)."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(b, s, d, generator=g)
    lengths = torch.tensor([s, *torch.randint(2, s, (b - 1,), generator=g).tolist()])
    mask = (torch.arange(s)[None] < lengths[:, None]).long()
    return embeds, mask


@pytest.mark.parametrize("training", [False, True])
def test_input_router_chooses_the_top_k_of_its_probabilities(training):
    """In eval and in training (noisy logits), the chosen routes are the k most probable, best
    first, with their probabilities as weights; the probabilities are softmax(W mean(x))."""
    torch.manual_seed(0)
    router = InputRouter(16, 6, topk=3, perturb=True, dropout=0.0).train(training)
    embeds, mask = padded_embeddings()
    out = router(embeds, mask)
    top = out.probs.topk(3, dim=-1)
    assert torch.equal(out.index, top.indices) and torch.equal(out.weights, top.values)
    assert (out.weights[:, :-1] >= out.weights[:, 1:]).all()
    if not training:  # the probabilities themselves, by hand
        pooled = torch.stack([embeds[i, :n].mean(0) for i, n in enumerate(mask.sum(1).tolist())])
        assert torch.allclose(out.probs, (pooled @ router.linear.weight.T).softmax(-1), atol=1e-6)


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    """A tiny BERT with LoRA (B non-zero, so the adapter is live) and one head (random bias)."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"build": "local", "name_or_path": str(tiny_bert_dir), "tokenizer": None}),
                        OmegaConf.create({"name": "lora", "rank": 4, "alpha": 8, "dropout": 0.0,
                                          "target_modules": r".*attention\.self\.(query|value)"}),
                        tasks=[get_task("rte")])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    return model.eval()


def tokenized(tokenizer, extra_pad=0):
    texts = ["a short one", "a much longer premise that keeps going for a while before it ends", "two words"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if extra_pad:  # the same rows padded further, as in a batch with a longer example
        ids = torch.cat([ids, torch.full((3, extra_pad), tokenizer.pad_token_id)], 1)
        mask = torch.cat([mask, torch.zeros(3, extra_pad, dtype=mask.dtype)], 1)
    return {"input_ids": ids, "attention_mask": mask, "task_id": torch.zeros(3, dtype=torch.long),
            "label": torch.tensor([0, 1, 0]), "choice_mask": torch.ones(3, 2, dtype=torch.bool)}


def test_encoder_pools_the_mean_over_attended_positions_so_padding_changes_no_score(encoder):
    batch = tokenized(encoder.tokenizer)
    assert (batch["attention_mask"] == 0).any(1).sum() == 2  # two rows really are padded
    with torch.no_grad():
        h = encoder.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled, _ = encoder._pooled(batch)
        by_hand = torch.stack([h[i, :n].mean(0) for i, n in enumerate(batch["attention_mask"].sum(1).tolist())])
        assert torch.allclose(pooled, by_hand, atol=1e-5)
        more = tokenized(encoder.tokenizer, extra_pad=9)
        assert torch.allclose(encoder.score(more)[0], encoder.score(batch)[0], atol=1e-5)
        assert torch.allclose(encoder(more)[0], encoder(batch)[0], atol=1e-5)  # the training loss too


def lora_on(base):
    torch.manual_seed(0)
    with torch.no_grad():
        base.bias.normal_(0, 1.0)  # Conv1D starts with a zero bias; a trained layer has none
    layer = LoRALinear(base, rank=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_(0, 1.0)  # B = 0 would make the adapter (and the fold) trivial
    return layer


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 5), lambda: Conv1D(5, 6)], ids=["Linear", "Conv1D"])
def test_folding_an_adapted_layer_keeps_its_bias_and_its_outputs(make):
    layer = lora_on(make())
    base = layer.base
    bias = base.bias.detach().clone()
    update = layer.scale * layer.lora_B @ layer.lora_A  # [out, in]
    merged = fold(layer)
    assert type(merged) is type(base)
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        assert torch.allclose(merged(x), layer(x), atol=1e-5)
        weight = merged.weight.T if isinstance(base, Conv1D) else merged.weight  # Conv1D stores [in, out]
        base_weight = base.weight.T if isinstance(base, Conv1D) else base.weight
        assert torch.allclose(weight, base_weight + update, atol=1e-5)
    assert torch.equal(merged.bias, bias)
