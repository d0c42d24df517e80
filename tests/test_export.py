"""mmpt runs leave mmpt and come back: PEFT adapter export, merged checkpoints, init_from=peft:DIR,
and trainer.max_steps=0 (evaluate only), on t5_tiny and a tiny BERT built in-process."""
import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSeq2SeqLM, BertConfig, BertModel

from conftest import ROOT, compose_cfg
from mmpt.engine.loop import validate_trainer
from mmpt.errors import CheckpointError, ConfigError, MMPTError
from mmpt.experiment import train
from mmpt.export.__main__ import export, push
from mmpt.export.mapping import ExportError
from mmpt.export.runs import load_run
from mmpt.models.backbone import load_tokenizer, minilm_dir

BERT_TARGETS = {"lora": r".*attention\.self\.(query|value)",
                "ia3": r".*attention\.self\.(key|value)|.*intermediate\.dense",
                "poly_lora": r".*attention\.self\.(query|value)|.*intermediate\.dense"}
# Settings that make the scale matter (alpha != rank) and the layouts non-trivial (MHR splits).
# poly: PEFT computes (alpha B) / r where mmpt computes (alpha / r) B; a power-of-2 ratio keeps
# the two bit-identical, so the 1e-5 bound on logits of ~20 tests the mapping, not rounding.
METHOD_ARGS = {
    "lora": ["method.rank=4", "method.alpha=12", "optimizer.groups.adapters.lr=0.05"],
    "ia3": ["optimizer.groups.adapters.lr=0.05"],
    "prompt_tuning": ["method.num_virtual_tokens=4"],
    "poly_lora": ["method.rank=2", "method.alpha=8", "method.n_skills=3", "method.n_splits=2",
                  "optimizer.groups.adapters.lr=0.05", "optimizer.groups.routing.lr=0.5"],
}
RUN_ARGS = ["dataset=cb", "dataset.max_length=48", "trainer.batch_size=4", "trainer.eval_every=3"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(d)
    load_tokenizer(minilm_dir()).save_pretrained(d)
    return d


def run_args(backbone, method, bert_dir):
    model = ["model=t5_tiny"] if backbone == "t5" else ["model=local", f"model.name_or_path={bert_dir}"]
    if backbone == "bert" and method in BERT_TARGETS:
        model.append(f"method.target_modules='{BERT_TARGETS[method]}'")
    return model + [f"method={method}"] + RUN_ARGS + METHOD_ARGS[method]


def run(out, args, *more):
    """train() as train.py runs it, including the config Hydra saves in the run dir."""
    cfg = compose_cfg([*args, *more], run_dir=out)
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return train(cfg)


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a padded row: prompts must extend the mask the same way
    return ids, mask, torch.tensor([[0, 2000, 3000], [0, 4000, 2500]])


def mmpt_out(model, ids, mask, dec):
    """The backbone's output as mmpt's method runs it (logits for T5, hidden states for BERT)."""
    batch = {"input_ids": ids, "attention_mask": mask, "task_id": torch.zeros(len(ids), dtype=torch.long)}
    kw, _ = model.method.prepare(batch, model.backbone)
    routing = getattr(model.method, "routing", None)
    with torch.no_grad(), routing(batch) if routing else nullcontext():
        if model.backbone.config.is_encoder_decoder:
            return model.backbone(**kw, decoder_input_ids=dec).logits
        return model.backbone(**kw).last_hidden_state


def plain_out(net, ids, mask, dec, **kw):
    with torch.no_grad():
        if net.config.is_encoder_decoder:
            return net(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, **kw).logits
        return net(input_ids=ids, attention_mask=mask, **kw).last_hidden_state


def max_diff(a, b):
    return float("inf") if a.shape != b.shape else (a - b).abs().max().item()


@pytest.mark.parametrize("backbone", ["t5", "bert"])
@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning", "poly_lora"])
def test_round_trips(tmp_path, backbone, method, bert_dir):
    """run -> PEFT export -> PeftModel equals mmpt; -> init_from + max_steps=0 gives the same test
    metrics and weights; -> merged export loads with AutoModel* and equals the adapter."""
    args = run_args(backbone, method, bert_dir)
    metrics = run(tmp_path / "run", args, "trainer.max_steps=3")
    _, model = load_run(tmp_path / "run")
    export(tmp_path / "run", "peft", tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    base_dir = tmp_path / "peft" / "base_model" if backbone == "t5" else bert_dir
    assert cfg["base_model_name_or_path"] == ("base_model" if backbone == "t5" else str(bert_dir))

    auto = AutoModelForSeq2SeqLM if backbone == "t5" else AutoModel
    ids, mask, dec = inputs()
    ours = mmpt_out(model, ids, mask, dec)
    plain = plain_out(auto.from_pretrained(base_dir).eval(), ids, mask, dec)
    task = {"task_ids": torch.zeros(2, dtype=torch.long)} if method == "poly_lora" else {}
    peft = PeftModel.from_pretrained(auto.from_pretrained(base_dir), tmp_path / "peft").eval()
    theirs = plain_out(peft, ids, mask, dec, **task)
    assert max_diff(theirs, ours) <= 1e-5
    assert max_diff(ours, plain) > 1e-4  # the trained adapter changes the output

    back = run(tmp_path / "back", args, f"init_from=peft:{tmp_path / 'peft'}", "trainer.max_steps=0")
    test = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert test and {k: back[k] for k in test} == test
    assert (tmp_path / "back" / "predictions" / "test.jsonl").read_text() == \
        (tmp_path / "run" / "predictions" / "test.jsonl").read_text()
    original = load_file(tmp_path / "run" / "checkpoints" / "best" / "trainable.safetensors")
    imported = load_file(tmp_path / "back" / "checkpoints" / "best" / "trainable.safetensors")
    assert original.keys() == imported.keys()
    assert all(torch.equal(original[k], imported[k]) for k in original)

    if method == "prompt_tuning":
        with pytest.raises(ExportError, match="cannot be merged"):
            export(tmp_path / "run", "merged", tmp_path / "merged")
        assert not (tmp_path / "merged").exists()
        return
    export(tmp_path / "run", "merged", tmp_path / "merged")
    merged = auto.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    # one folded matrix rounds differently from W x + s B A x: equal to fp32 precision at the
    # outputs' scale (tiny random T5 logits reach ~40)
    assert max_diff(plain_out(merged, ids, mask, dec), ours) <= 1e-5 * max(1.0, ours.abs().max().item())


def test_encoder_head_is_exported_and_scores_like_mmpt(tmp_path, bert_dir):
    """The head files next to a BERT adapter, used as README shows, give mmpt's choice scores."""
    run(tmp_path / "run", run_args("bert", "lora", bert_dir), "trainer.max_steps=2")
    _, model = load_run(tmp_path / "run")
    export(tmp_path / "run", "peft", tmp_path / "peft")
    info = json.loads((tmp_path / "peft" / "head.json").read_text())["heads"][0]
    assert info["task"] == "cb" and info["labels"] == ["entailment", "contradiction", "neutral"]
    head = load_file(tmp_path / "peft" / "head.safetensors")
    ids, mask, _ = inputs()
    peft = PeftModel.from_pretrained(AutoModel.from_pretrained(bert_dir), tmp_path / "peft").eval()
    with torch.no_grad():
        h = peft(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        logits = pooled @ head["0.weight"].T + head["0.bias"]
        batch = {"input_ids": ids, "attention_mask": mask, "task_id": torch.zeros(2, dtype=torch.long),
                 "choice_mask": torch.ones(2, 3, dtype=torch.bool)}
        scores, _ = model.score(batch)
    assert max_diff(logits, scores) <= 1e-5


def test_max_steps_zero_evaluates_the_loaded_weights_only(tmp_path):
    """trainer.max_steps=0: no optimizer step, the initial weights are scored and written."""
    args = ["model=t5_tiny", "method=lora", *RUN_ARGS, "method.rank=2"]
    metrics = run(tmp_path / "run", args, "trainer.max_steps=0")
    assert metrics["best_step"] == 0 and "test/acc" in metrics and "val/acc" in metrics
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    rows = (tmp_path / "run" / "predictions" / "test.jsonl").read_text().splitlines()
    assert len(rows) == 56  # CB's official validation set
    assert not any(json.loads(line)["event"] == "train"
                   for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    _, fresh = load_run(tmp_path / "run")  # rebuilt with the same seed: the untouched init
    weights = load_file(tmp_path / "run" / "checkpoints" / "best" / "trainable.safetensors")
    lora_B = [v for k, v in weights.items() if k.endswith("lora_B")]
    assert lora_B and all(torch.count_nonzero(b) == 0 for b in lora_B)  # B starts at 0; one step moves it
    assert all(torch.equal(p, weights[n]) for n, p in fresh.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("value", [-1, 1.5, "x"])
def test_max_steps_rejects_what_is_not_a_count(value):
    cfg = compose_cfg(["model=t5_tiny", "method=lora"])
    with open_dict(cfg):
        cfg.trainer.max_steps = value
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        validate_trainer(cfg.trainer)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    run(d / "run", ["model=t5_tiny", "method=lora", *RUN_ARGS, "method.rank=2"], "trainer.max_steps=1")
    export(d / "run", "peft", d / "peft")
    return d


@pytest.mark.parametrize("over, key", [
    (["method=ia3"], "needs IA3 \\(method=lora reads it\\)"),
    (["method=lora", "method.rank=4"], "r=2; this run has 4 \\(set method.rank"),
    (["method=lora", "method.rank=2", "method.alpha=3"], "set method.alpha"),
    (["method=lora", "method.rank=2", "method.target_modules='.*SelfAttention\\.(q|v)'"], "target_modules"),
    (["method=lora", "method.rank=2", "model.init_seed=1"], "base model .* differs"),
    (["method=prompt_tuning"], "needs PROMPT_TUNING"),
])
def test_init_from_refuses_a_mismatch(lora_run, tmp_path, over, key):
    cfg = compose_cfg(["model=t5_tiny", "dataset=cb", *over, f"init_from=peft:{lora_run / 'peft'}"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"init_from.*{key}"):
        train(cfg)


def test_export_refusals(lora_run, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoints/best"):
        (tmp_path / "bare" / ".hydra").mkdir(parents=True)
        (tmp_path / "bare" / ".hydra" / "config.yaml").write_text((lora_run / "run" / ".hydra" / "config.yaml").read_text())
        export(tmp_path / "bare", "peft", tmp_path / "out")
    with pytest.raises(ExportError, match="not empty"):
        export(lora_run / "run", "peft", lora_run / "peft")
    with pytest.raises(MMPTError, match="upload failed .*offline"):  # the tests run offline
        push(lora_run / "peft", "someone/some-adapter")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, why", [
    ("prefix_routing", "routes prefixes per input"), ("prompt_routing", "SMoP"), ("full", "use --format merged"),
    ("prefix", "cache, which computes something else"), ("poly_ia3", "LoRA skills only")])
def test_inexpressible_methods_fail_in_one_line_and_write_nothing(tmp_path, method, why):
    run(tmp_path / "run", ["model=t5_tiny", f"method={method}", *RUN_ARGS], "trainer.max_steps=1")
    with pytest.raises(ExportError, match=f"method {method} cannot be written as a PEFT adapter: .*{why}"):
        export(tmp_path / "run", "peft", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_cli_prints_one_line_and_exits_2(lora_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmpt.export", str(tmp_path / "nothing"), "--format", "peft",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no .hydra/config.yaml" in proc.stderr
