"""mmpt runs leave mmpt and come back: PEFT adapter export, merged checkpoints, init_from=peft:DIR,
and trainer.max_steps=0 (evaluate only), on t5_tiny, a tiny BERT, llama_tiny and gpt2_tiny."""
import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import set_seed
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, BertConfig, BertModel

from conftest import ROOT, compose_cfg
from mmpt.settings import training
from mmpt.errors import CheckpointError, ConfigError, MMPTError
from mmpt.engine import checkpoint
from mmpt.recipes import train
from mmpt.recipes.common import load_data
from mmpt.export import peft_format
from mmpt.export.__main__ import export, push
from mmpt.export.importer import init_from
from mmpt.export.mapping import ExportError
from mmpt.export.mappings import peft_mapping
from conftest import load_run
from mmpt.models import build_model, load_backbone
from mmpt.models.backbone import load_tokenizer, minilm_dir
from mmpt.models.causal import positions

CAUSAL = {"llama": "llama_tiny", "gpt2": "gpt2_tiny"}
AUTO = {"t5": AutoModelForSeq2SeqLM, "bert": AutoModel, "llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM}

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
    "prefix": ["method.num_virtual_tokens=3"],
    "poly_lora": ["method.rank=2", "method.alpha=8", "method.n_skills=3", "method.n_splits=2",
                  "optimizer.groups.adapters.lr=0.05", "optimizer.groups.routing.lr=0.5"],
}
RUN_ARGS = ["dataset=cb", "dataset.max_length=48", "trainer.batch_size=4", "trainer.eval_every=3"]
LORA_ARGS = ["model=t5_tiny", "method=lora", *RUN_ARGS, "method.rank=2", "optimizer.groups.adapters.lr=0.05",
             "trainer.log_every=1"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(d)
    load_tokenizer(minilm_dir()).save_pretrained(d)
    return d


def run_args(backbone, method, bert_dir):
    if backbone in CAUSAL:
        model = [f"model={CAUSAL[backbone]}"]
    else:
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


def real(logits, mask):
    """A causal LM's logits at the real tokens (soft prompt positions dropped, pads zeroed)."""
    return logits[:, -mask.shape[1]:] * mask[..., None]


def mmpt_out(model, ids, mask, dec):
    """The backbone's output as mmpt's method runs it (logits for T5 and causal LMs, hidden states
    for BERT); a causal LM through mmpt's own path (positions from the mask, prefix in attention)."""
    batch = {"input_ids": ids, "attention_mask": mask, "task_id": torch.zeros(len(ids), dtype=torch.long)}
    kw, _ = model.method.prepare(batch, model.backbone)
    routing = getattr(model.method, "routing", None)
    with torch.no_grad(), routing(batch) if routing else nullcontext():
        if model.backbone.config.is_encoder_decoder:
            return model.backbone(**kw, decoder_input_ids=dec).logits
        if hasattr(model, "continuation_logp"):
            return real(model._head(model._states(kw, position_ids=positions(kw["attention_mask"]))), mask)
        return model.backbone(**kw).last_hidden_state


def plain_out(net, ids, mask, dec, **kw):
    with torch.no_grad():
        if net.config.is_encoder_decoder:
            return net(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, **kw).logits
        out = net(input_ids=ids, attention_mask=mask, **kw)
        return real(out.logits, mask) if hasattr(out, "logits") else out.last_hidden_state


def max_diff(a, b):
    return float("inf") if a.shape != b.shape else (a - b).abs().max().item()


ROUND_TRIPS = [(b, m) for b in ("t5", "bert", "llama") for m in ("lora", "ia3", "prompt_tuning", "poly_lora")]
ROUND_TRIPS += [("llama", "prefix"), ("gpt2", "lora"), ("gpt2", "ia3"), ("gpt2", "prompt_tuning")]


@pytest.mark.parametrize("backbone, method", ROUND_TRIPS)
def test_round_trips(tmp_path, backbone, method, bert_dir):
    """run -> PEFT export -> PeftModel equals mmpt; -> init_from + max_steps=0 gives the same test
    metrics and weights; -> merged export loads with AutoModel* and equals the adapter."""
    args = run_args(backbone, method, bert_dir)
    metrics = run(tmp_path / "run", args, "trainer.max_steps=3")
    _, model = load_run(tmp_path / "run")
    export(tmp_path / "run", "peft", tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    base_dir = bert_dir if backbone == "bert" else tmp_path / "peft" / "base_model"
    assert cfg["base_model_name_or_path"] == str(bert_dir if backbone == "bert" else base_dir.resolve())
    assert cfg["task_type"] == {"t5": "SEQ_2_SEQ_LM", "bert": "FEATURE_EXTRACTION"}.get(backbone, "CAUSAL_LM")
    if method in ("lora", "ia3"):  # GPT-2's Conv1D weights are stored [in, out]
        assert cfg["fan_in_fan_out"] == (backbone == "gpt2")

    auto = AUTO[backbone]
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
    # prefix keys are rotated on the way out and back (prefix_cache.py): equal to fp32 rounding
    tol = 1e-6 if method == "prefix" else 0.0
    assert all(torch.allclose(original[k], imported[k], rtol=0, atol=tol) for k in original)

    if method in ("prompt_tuning", "prefix"):
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
        training(cfg.trainer)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    run(d / "run", LORA_ARGS, "trainer.max_steps=2")
    export(d / "run", "peft", d / "peft")
    return d


def train_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if r["event"] == "train"]


def test_training_goes_on_from_an_imported_adapter(lora_run, tmp_path):
    """init_from=peft:DIR then training: the first step's loss is the imported adapter's loss on the
    first batch (not a fresh adapter's), and training moves the weights and lowers the loss."""
    no_dropout = ["model.dropout=0", "method.dropout=0"]  # so that the first loss can be recomputed
    run(tmp_path / "on", LORA_ARGS, *no_dropout, f"init_from=peft:{lora_run / 'peft'}",
        "trainer.max_steps=8", "trainer.eval_every=8")
    losses = train_losses(tmp_path / "on")
    cfg = OmegaConf.load(tmp_path / "on" / ".hydra" / "config.yaml")
    set_seed(cfg.seed)
    model = build_model(cfg.model, cfg.method, n_tasks=1)  # the run's fresh adapter, before init_from
    batch = next(iter(load_data(cfg, model.tokenizer, cfg.seed).loader("train")))
    with torch.no_grad():
        at_fresh = model(batch)[0].item()
        checkpoint.load_weights(lora_run / "run" / "checkpoints" / "best", model)  # = the export
        at_imported = model(batch)[0].item()
    assert abs(losses[0] - at_imported) < 1e-4 and abs(losses[0] - at_fresh) > 1e-2
    exported = load_file(lora_run / "run" / "checkpoints" / "best" / "trainable.safetensors")
    trained = load_file(tmp_path / "on" / "checkpoints" / "best" / "trainable.safetensors")
    assert exported.keys() == trained.keys()
    assert all((trained[k] - exported[k]).abs().max() > 1e-3 for k in trained)
    assert len(losses) == 8 and sum(losses[-4:]) < sum(losses[:4]) - 0.5, losses


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


def prefix_twins(model_name, peft_task):
    """An mmpt prefix model (decoder placement) and PEFT's prefix tuning on the same base, with
    PEFT's table holding mmpt's prefix as it is (the layouts match: [P, layer, K|V, head, d_head])."""
    cfg = compose_cfg([f"model={model_name}", "method=prefix", "method.placement=decoder",
                       "method.num_virtual_tokens=3"])
    torch.manual_seed(0)
    ours = build_model(cfg.model, cfg.method).eval()
    theirs = get_peft_model(load_backbone(cfg.model)[0], PrefixTuningConfig(task_type=peft_task, num_virtual_tokens=3))
    return ours, theirs.eval(), theirs.prompt_encoder["default"].embedding.weight


def test_t5_prefix_differs_from_peft_by_the_position_bias_of_its_keys():
    """Why a T5 decoder prefix is refused: PEFT's seq2seq layout gives decoder layers l and l+L/2
    one prefix, and in the decoder's cache the prefix keys get relative position biases. With the
    two layers' prefixes equal, mmpt and PEFT agree exactly when the decoder's bias table is zero
    (which no trained T5 has), and not otherwise."""
    ours, theirs, table = prefix_twins("t5_tiny", "SEQ_2_SEQ_LM")
    p = table.shape[0]
    with torch.no_grad():  # L = 2: layer 1 reads layer 0's slots in PEFT, so make mmpt's equal
        prefix = ours.method.prefix.view(p, 2, -1)
        prefix[:, 1] = prefix[:, 0]
        table.copy_(ours.method.prefix)
    ids, mask, dec = inputs()

    def both():
        return mmpt_out(ours, ids, mask, dec), plain_out(theirs, ids, mask, dec)

    assert max_diff(*both()) > 1e-2
    with torch.no_grad():
        for net in (ours.backbone, theirs.get_base_model()):
            net.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
    assert max_diff(*both()) <= 1e-5
    with pytest.raises(ExportError, match="relative position biases"):
        peft_format.tensors(peft_mapping(ours.method), ours)


def test_gpt2_prefix_differs_from_peft_by_the_shifted_positions():
    """Why a GPT-2 prefix is refused: PEFT's cache prefix moves the real tokens to position rows
    P.. of the learned table. With all rows equal (no position information) mmpt and PEFT agree
    exactly; with GPT-2's own table they do not."""
    ours, theirs, table = prefix_twins("gpt2_tiny", "CAUSAL_LM")
    with torch.no_grad():
        table.copy_(ours.method.prefix)
    ids, mask, _ = inputs()
    mask = torch.ones_like(ids)

    def both():
        return mmpt_out(ours, ids, mask, None), plain_out(theirs, ids, mask, None)

    assert max_diff(*both()) > 1e-2
    with torch.no_grad():
        for net in (ours.backbone, theirs.get_base_model()):
            net.transformer.wpe.weight[:] = net.transformer.wpe.weight[0]
    assert max_diff(*both()) <= 1e-5
    with pytest.raises(ExportError, match="learned absolute positions"):
        peft_format.tensors(peft_mapping(ours.method), ours)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_prefix_trained_with_peft_imports_where_peft_computes_mmpts_prefix(tmp_path, arch):
    """A prefix adapter PEFT itself wrote: on Llama (RoPE) init_from rotates its keys back and mmpt
    then computes PEFT's outputs; on GPT-2 (learned positions) it is refused with the reason."""
    cfg = compose_cfg([f"model={CAUSAL[arch]}", "method=prefix", "method.num_virtual_tokens=3", "dataset=cb",
                       f"init_from=peft:{tmp_path / 'peft'}"], run_dir=tmp_path / "run")
    base = load_backbone(cfg.model)[0]
    theirs = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.normal_()
    theirs.peft_config["default"].base_model_name_or_path = "base_model"
    theirs.save_pretrained(tmp_path / "peft")
    base.save_pretrained(tmp_path / "peft" / "base_model")
    if arch == "gpt2":
        with pytest.raises(ConfigError, match="init_from.*learned absolute positions"):
            train(cfg)
        return
    set_seed(cfg.seed)
    ours = build_model(cfg.model, cfg.method, n_tasks=1).eval()
    init_from(cfg.init_from, ours, cfg.model, None)
    ids, mask, dec = inputs()
    assert max_diff(mmpt_out(ours, ids, mask, dec), plain_out(theirs, ids, mask, dec)) <= 1e-5


@pytest.mark.parametrize("model, method, why", [
    ("t5_tiny", "prefix_routing", "routes prefixes per input"), ("t5_tiny", "prompt_routing", "SMoP"),
    ("t5_tiny", "full", "use --format merged"), ("t5_tiny", "poly_ia3", "LoRA skills only"),
    ("t5_tiny", "prefix", "decoder's key/value cache only, .* encoder \\(method.placement=both"),
    ("gpt2_tiny", "prefix", "learned absolute positions"), ("gpt2_tiny", "poly_lora", "Conv1D")])
def test_inexpressible_methods_fail_in_one_line_and_write_nothing(tmp_path, model, method, why):
    run(tmp_path / "run", [f"model={model}", f"method={method}", *RUN_ARGS], "trainer.max_steps=1")
    with pytest.raises(ExportError, match=f"method {method} cannot be written as a PEFT adapter: .*{why}"):
        export(tmp_path / "run", "peft", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.subprocess
def test_cli_prints_one_line_and_exits_2(lora_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmpt.export", str(tmp_path / "nothing"), "--format", "peft",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no .hydra/config.yaml" in proc.stderr
