"""trainer.eval_mode=generate on causal LMs: mmpt's cached greedy decoding (CausalLM.generate) equals
transformers' own `generate`, a run writes the decoded outputs and `invalid_rate`, and where an
output is a label it is the label rank classification picks."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, fit_batch
from mmpt.engine import checkpoint
from mmpt.engine.evaluate import evaluate, predict
from mmpt.settings import EvaluationSettings
from mmpt.recipes import train
from mmpt.recipes.common import load_data
from mmpt.models import build_model, load_backbone
from test_causal import BACKBONES, batch_for, left_padded, make, single


def hf_greedy(backbone, batch, n, eos, pad):
    """transformers' greedy decoding of a left-padded batch: the new tokens only."""
    out = backbone.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=n,
                            do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
    return out[:, batch["input_ids"].shape[1]:]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def trained(request):
    """LoRA on a toy batch of three prompts, trained until some rows decode a label and end in EOS."""
    model = make("lora", request.param)
    batch = batch_for(model)  # three prompts of different lengths: padded rows
    fit_batch(model, batch, 3e-2, 30)
    return request.param, model.eval(), batch


def test_greedy_decoding_equals_transformers_generate_with_a_lora_adapter(trained):
    arch, model, batch = trained
    assert all(layer.lora_B.abs().sum() > 0 for layer in model.backbone.modules() if hasattr(layer, "lora_B"))
    left = left_padded(batch)  # transformers' generate needs left padding; ours takes either side
    theirs = hf_greedy(model.backbone, left, 8, model.eos_id, model.pad_id)
    for padded in (batch, left):
        ours, _ = model.generate(padded, max_new_tokens=8)
        assert torch.equal(ours, theirs)
    for b in range(3):  # each prompt alone, unpadded, decodes the same (up to the batch's pads after EOS)
        alone = model.generate(single(batch, b), max_new_tokens=8)[0][0]
        assert torch.equal(alone, theirs[b, :len(alone)]) and (theirs[b, len(alone):] == model.pad_id).all()
    assert (theirs == model.eos_id).any(-1).any(), theirs  # the stop at EOS (and the pads after it) is compared too
    # the adapter acts: the backbone without it decodes something else
    plain, _ = load_backbone(OmegaConf.create(BACKBONES[arch]))
    assert not torch.equal(hf_greedy(plain.eval(), left, 8, model.eos_id, model.pad_id), theirs)


def test_decoded_labels_are_the_rank_classification_choices(trained):
    _, model, batch = trained
    choices = ["yes", "no", "maybe not"]  # batch_for's
    ranked, _, _ = predict(model, [batch], lambda i: choices, "rank")
    generated, texts, _ = predict(model, [batch], lambda i: choices, "generate", max_new_tokens=8)
    labelled = [i for i in generated if generated[i] >= 0]
    assert len(labelled) >= 2, texts
    assert all(generated[i] == ranked[i] for i in labelled), (texts, ranked)


@pytest.mark.parametrize("arch", ["llama_tiny", "gpt2_tiny"])
def test_a_generate_run_writes_outputs_that_agree_with_rank_classification(arch, tmp_path):
    """eval_mode=generate was refused on causal LMs (the check asked the HF config for an encoder-decoder).
    Full fine-tuning, long enough on CB that (nearly) every output is a label and the model is sure of
    it (LoRA on the random tiny backbones needs far longer; half-trained, greedy decoding and rank
    classification differ where a label's first token is likelier but the whole label is not)."""
    cfg = compose_cfg([f"model={arch}", "method=full", "dataset=cb", "dataset.max_length=64", "trainer.max_steps=60",
                       "trainer.eval_every=60", "optimizer.groups.backbone.lr=1e-2", "trainer.eval_mode=generate"],
                      run_dir=tmp_path)
    metrics = train(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "predictions" / "test.jsonl")]
    assert len(rows) == 56 and all(isinstance(r["output"], str) for r in rows)
    invalid = [r["prediction"] is None for r in rows]
    assert metrics["test/invalid_rate"] == pytest.approx(sum(invalid) / 56)
    assert metrics["test/acc"] == pytest.approx(sum(r["prediction"] == r["label"] for r in rows) / 56)
    labelled = [r for r in rows if r["prediction"] is not None]
    assert len(labelled) >= 40, [r["output"] for r in rows]
    assert all(r["output"].strip() == r["prediction"] for r in labelled)
    # the same best weights, scored by rank classification
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.method)
    checkpoint.load_weights(checkpoint.find(tmp_path / "checkpoints" / "best"), model)
    data = load_data(cfg, model.tokenizer, cfg.seed)
    _, ranked, _ = evaluate(model, data.loader("test"), data.test, data.task,
                            EvaluationSettings("rank", 10, "fp32", 0, False))
    by_id = {r["id"]: r["prediction"] for r in ranked}
    assert [r["prediction"] for r in labelled] == [by_id[r["id"]] for r in labelled]
