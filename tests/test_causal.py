"""Decoder-only backbones (models/causal.py): tiny Llama (RoPE, grouped-query attention) and GPT-2
(learned positions, Conv1D) under every mechanism; scoring, padding, prefixes, PEFT equality."""
import pytest
import torch
from omegaconf import OmegaConf
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

from conftest import fit_batch, toy_batch
from mmpt.engine import checkpoint
from mmpt.errors import MMPTError
from mmpt.methods.prefix_attention import PrefixState
from mmpt.models import build_model, load_backbone
from mmpt.models.causal import CausalLM

# init_std 0.2 (not 0.02): logits far from uniform, so a method can move the loss in a few steps
BACKBONES = {
    "llama": dict(build="llama_tiny", name_or_path=None, tokenizer=None, d_model=32, d_ff=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_positions=128, init_std=0.2),
    "gpt2": dict(build="gpt2_tiny", name_or_path=None, tokenizer=None, d_model=32, d_ff=64, num_layers=2,
                 num_heads=4, max_positions=128, dropout=0.0, init_std=0.2),
}
TARGETS = {  # (lora, ia3) patterns; GPT-2's are Conv1D layers
    "llama": (r".*self_attn\.(q_proj|v_proj)", r".*self_attn\.(k_proj|v_proj)|.*mlp\.up_proj"),
    "gpt2": (r".*attn\.c_attn", r".*attn\.c_attn|.*mlp\.c_fc"),
}
LRS = {"full": 1e-2, "prompt_tuning": 0.3, "prefix": 0.05, "lora": 1e-2, "ia3": 0.05, "poly_lora": 1e-2}


def method_cfg(name, arch):
    lora, ia3 = TARGETS[arch]
    return {"full": dict(name="full"),
            "prompt_tuning": dict(name="prompt_tuning", num_virtual_tokens=4, init="vocab"),
            "prefix": dict(name="prefix", num_virtual_tokens=3, placement="both", init_std=1.0),
            "lora": dict(name="lora", rank=4, alpha=8, dropout=0.0, target_modules=lora),
            "ia3": dict(name="ia3", target_modules=ia3),
            "poly_lora": dict(name="poly_lora", n_skills=2, n_splits=1, rank=2, alpha=4, dropout=0.0,
                              target_modules=lora)}[name]


POLY_ROUTER = dict(name="poly", granularity="finegrained", init="uniform", temperature=1.0)


def make(name, arch, seed=0):
    torch.manual_seed(seed)
    router = OmegaConf.create(POLY_ROUTER) if name.startswith("poly") else None
    return build_model(OmegaConf.create(BACKBONES[arch]), OmegaConf.create(method_cfg(name, arch)), router,
                       n_tasks=2)


def batch_for(model, **kw):
    texts = ("the cat sat on the mat today", "a dog", "birds fly south in the winter months")
    return toy_batch(model.tokenizer, texts=texts, choices=("yes", "no", "maybe not"), labels=(0, 1, 2), **kw)


def left_padded(batch):
    """The same batch with every prompt moved to the right end (left padding)."""
    out = dict(batch)
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for b in range(len(ids)):
        n = int(mask[b].sum())
        ids[b] = torch.roll(ids[b], ids.shape[1] - n)
        mask[b] = torch.roll(mask[b], ids.shape[1] - n)
    out["input_ids"], out["attention_mask"] = ids, mask
    return out


def single(batch, b):
    """Example b alone, its padding removed."""
    n = int(batch["attention_mask"][b].sum())
    out = {k: v[b:b + 1] for k, v in batch.items()}
    out["input_ids"], out["attention_mask"] = out["input_ids"][:, :n], out["attention_mask"][:, :n]
    return out


def test_family_detection_and_prefix_shapes():
    llama, gpt2 = make("prefix", "llama"), make("prefix", "gpt2")
    assert isinstance(llama, CausalLM) and isinstance(gpt2, CausalLM)
    assert llama.method.sites == ["decoder.0", "decoder.1"]
    # grouped-query attention: the prefix has the 2 key/value heads, not the 4 query heads
    assert llama.method.prefix.shape == (3, 2 * 2 * 2 * 8)
    assert gpt2.method.prefix.shape == (3, 2 * 2 * 4 * 8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["prefix", "prompt_tuning"])
def test_padding_side_does_not_change_scores_or_loss(arch, name):
    """A batch of mixed lengths, padded right or left, scores as each example alone."""
    model = make(name, arch).eval()
    batch = batch_for(model)
    right, _ = model.score(batch)
    left, _ = model.score(left_padded(batch))
    alone = torch.cat([model.score(single(batch, b))[0] for b in range(3)])
    assert torch.allclose(right, alone, atol=1e-5) and torch.allclose(left, alone, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(batch)[0], model(left_padded(batch))[0], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["prefix", "prompt_tuning", "poly_lora"])
def test_cached_rank_scores_equal_prompt_plus_choice_per_choice(arch, name):
    """Scores from the shared prompt cache equal running prompt + choice for every choice."""
    model = make(name, arch)
    batch = batch_for(model)
    batch["task_id"] = torch.tensor([0, 1, 1])
    fit_batch(model, batch, LRS[name], 2)  # move the method off its init (non-zero LoRA B)
    model.eval()
    scores, _ = model.score(batch)
    with torch.no_grad():
        for b in range(3):
            for c in range(3):
                one = single(batch, b)
                one["labels"] = batch["choice_ids"][b, c][None]
                loss, _ = model(one)
                naive = -loss * (one["labels"] != -100).sum()
                assert abs(scores[b, c] - naive) < 1e-4, (b, c)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_plain_scores_equal_the_backbones_own_logits(arch):
    """Without a method the cached scores are the log-likelihood under the stock HF forward."""
    model = make("prefix", arch).eval()
    batch = batch_for(model)
    model.method.prepare = lambda batch, backbone: ({"input_ids": batch["input_ids"],
                                                     "attention_mask": batch["attention_mask"]}, {})
    scores, _ = model.score(batch)
    for b in range(3):
        prompt = single(batch, b)["input_ids"][0]
        for c in range(3):
            choice = batch["choice_ids"][b, c]
            choice = choice[choice != -100]
            ids = torch.cat([prompt, choice])[None]
            with torch.no_grad():
                logp = model.backbone(input_ids=ids).logits[0].log_softmax(-1)
            expect = logp[len(prompt) - 1:-1].gather(-1, choice[:, None]).sum()
            assert abs(scores[b, c] - expect) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_empty_prefix_leaves_outputs_unchanged(arch):
    model = make("prefix", arch).eval()
    batch = batch_for(model)
    h, d = model.method.info["n_heads"], model.method.info["d_head"]
    empty = PrefixState({s: (torch.zeros(1, h, 0, d), torch.zeros(1, h, 0, d)) for s in model.method.sites})
    plain = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.method.prepare = lambda batch, backbone: (plain, {})
    without, _ = model.score(batch)
    model.method.prepare = lambda batch, backbone: ({**plain, "mmpt_prefix": empty}, {})
    with_empty, _ = model.score(batch)
    assert torch.allclose(without, with_empty, atol=1e-6)
    prefixed = make("prefix", arch).eval()
    assert not torch.allclose(prefixed.score(batch)[0], without, atol=1e-3)  # a real prefix does act


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["prefix", "prompt_tuning"])
def test_greedy_generation_with_cache_matches_teacher_forcing(arch, name):
    """Cached step-by-step decoding (prefix re-joined at every step) reproduces a full forward's argmax."""
    model = make(name, arch)
    batch = batch_for(model)
    fit_batch(model, batch, LRS[name], 3)
    model.eval()
    ids, _ = model.generate(batch, max_new_tokens=4)
    for b in range(3):
        one = single(batch, b)
        kw, _ = model.method.prepare(one, model.backbone)
        full = model._append(kw, ids[b:b + 1, :-1], torch.ones_like(ids[b:b + 1, :-1], dtype=torch.bool))
        with torch.no_grad():
            h = model.backbone.base_model(**full).last_hidden_state
        greedy = model._head(h[0, kw["attention_mask"].shape[1] - 1:]).argmax(-1)
        out = ids[b]
        n = (out == model.eos_id).nonzero()[0].item() + 1 if (out == model.eos_id).any() else len(out)
        assert torch.equal(greedy[:n], out[:n])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["full", "prompt_tuning", "prefix", "lora", "ia3"])
def test_loss_falls_and_gradients_reach_exactly_the_methods_groups(arch, name):
    model = make(name, arch)
    batch = batch_for(model)
    groups = model.method.param_groups()
    in_groups = {id(p) for ps in groups.values() for p in ps}
    loss, _ = model(batch)
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in in_groups) == p.requires_grad, n
    for group, params in groups.items():
        assert any(p.grad.abs().sum() > 0 for p in params), group
    for p in model.parameters():
        p.grad = None
    losses = fit_batch(model, batch, LRS[name], 15)
    assert losses[-1] < losses[0] - 1.0, losses  # a nat gained on the toy batch


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_fresh_adapters_leave_outputs_unchanged(arch, name):
    plain = make("prefix", arch).eval()
    plain.method.prepare = lambda batch, backbone: ({"input_ids": batch["input_ids"],
                                                     "attention_mask": batch["attention_mask"]}, {})
    adapted = make(name, arch).eval()
    batch = batch_for(adapted)
    assert torch.allclose(adapted.score(batch)[0], plain.score(batch)[0], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["prefix", "lora"])
def test_checkpoint_round_trip_gives_identical_outputs(arch, name, tmp_path):
    model = make(name, arch)
    batch = batch_for(model)
    fit_batch(model, batch, LRS[name], 3)
    model.eval()
    before, _ = model.score(batch)
    checkpoint.save(tmp_path / "ck", model, {"method": name})
    fresh = make(name, arch, seed=1).eval()
    assert not torch.equal(fresh.score(batch)[0], before)
    checkpoint.load_weights(tmp_path / "ck", fresh)
    assert torch.equal(fresh.score(batch)[0], before)


# ---- equality with PEFT on copied weights ----

def peft_twin(arch, config):
    backbone, _ = load_backbone(OmegaConf.create(BACKBONES[arch]))
    return get_peft_model(backbone, config).eval()


def peft_loss(peft_model, batch):
    """PEFT's loss on prompt + gold continuation (labels -100 on the prompt): one example."""
    n = int(batch["attention_mask"][0].sum())
    target = batch["labels"][0][batch["labels"][0] != -100]
    ids = torch.cat([batch["input_ids"][0, :n], target])[None]
    labels = torch.cat([torch.full((n,), -100), target])[None]
    return peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def assert_twins(ours, peft_model, pairs, batch):
    """Same loss and same gradients; pairs: (our parameter, PEFT's parameter, transform to ours)."""
    ours.eval()
    one = single(batch, 0)
    loss, _ = ours(one)
    ref = peft_loss(peft_model, one)
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    loss.backward()
    ref.backward()
    for mine, theirs, how in pairs:
        assert torch.allclose(mine.grad, how(theirs.grad), atol=1e-5)


def randomise_(*params):
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn_like(p) * 0.1 + (1 if p.shape[-1] == 1 or p.dim() == 1 else 0))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_tuning_equals_peft(arch):
    ours = make("prompt_tuning", arch)
    theirs = peft_twin(arch, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    table = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        table.copy_(ours.method.prompt)
    assert_twins(ours, theirs, [(ours.method.prompt, table, lambda g: g)], batch_for(ours))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_equals_peft(arch):
    """GPT-2's c_attn is a Conv1D ([in, out] weight): PEFT needs fan_in_fan_out, ours reads its widths."""
    ours = make("lora", arch)
    target = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn"]
    theirs = peft_twin(arch, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                        target_modules=target, fan_in_fan_out=arch == "gpt2"))
    pairs = []
    for name, layer in ours.backbone.named_modules():
        if hasattr(layer, "lora_A"):
            twin = theirs.base_model.model.get_submodule(name)
            randomise_(layer.lora_A, layer.lora_B)  # B off zero: the update is not trivially 0
            with torch.no_grad():
                twin.lora_A["default"].weight.copy_(layer.lora_A)
                twin.lora_B["default"].weight.copy_(layer.lora_B)
            pairs += [(layer.lora_A, twin.lora_A["default"].weight, lambda g: g),
                      (layer.lora_B, twin.lora_B["default"].weight, lambda g: g)]
    assert len(pairs) == 2 * (4 if arch == "llama" else 2)
    assert_twins(ours, theirs, pairs, batch_for(ours))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ia3_equals_peft(arch):
    """Llama: our scale on up_proj's output equals PEFT's feed-forward scale on down_proj's input
    (down_proj(act(gate) * up * l) = down_proj((act(gate) * up) * l)); GPT-2: output scales on Conv1D."""
    ours = make("ia3", arch)
    if arch == "llama":
        config = IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                           feedforward_modules=["down_proj"])
        twin_of = {"up_proj": "down_proj"}
    else:
        config = IA3Config(task_type="CAUSAL_LM", target_modules=["c_attn", "c_fc"], feedforward_modules=[],
                           fan_in_fan_out=True)
        twin_of = {}
    theirs = peft_twin(arch, config)
    pairs = []
    for name, layer in ours.backbone.named_modules():
        if hasattr(layer, "ia3_l"):
            parent, _, leaf = name.rpartition(".")
            twin = theirs.base_model.model.get_submodule(f"{parent}.{twin_of.get(leaf, leaf)}")
            theirs_l = twin.ia3_l["default"]
            randomise_(layer.ia3_l)
            with torch.no_grad():
                theirs_l.copy_(layer.ia3_l.view_as(theirs_l))
            pairs.append((layer.ia3_l, theirs_l, lambda g: g.flatten()))
    assert len(pairs) == 2 * (3 if arch == "llama" else 2)
    assert_twins(ours, theirs, pairs, batch_for(ours))


def test_prefix_equals_peft_where_the_two_definitions_coincide():
    """PEFT puts the prefix in the cache, so the real tokens sit at positions P..P+T-1; mmpt keeps
    them at 0..T-1 and gives the prefix no position. With RoPE (Llama) the two coincide exactly when
    the prefix keys are zero: a real query's score against a zero key is 0 at any position, and the
    scores between real tokens depend only on their relative position, which a common shift by P
    leaves unchanged. The prefix values still act (they are random), so the test is not trivial."""
    ours = make("prefix", "llama")
    theirs = peft_twin("llama", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    table = theirs.prompt_encoder["default"].embedding.weight
    h, d = ours.method.info["n_heads"], ours.method.info["d_head"]
    with torch.no_grad():  # both layouts are [P, layer, key|value, kv head, d_head]
        ours.method.prefix.view(3, 2, 2, h, d)[:, :, 0] = 0
        table.copy_(ours.method.prefix)
    # keys are held at zero, so compare the value gradients only
    values = lambda t: t.view(3, 2, 2, h, d)[:, :, 1]  # noqa: E731
    ours.eval()
    one = single(batch_for(ours), 0)
    loss, _ = ours(one)
    ref = peft_loss(theirs, one)
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    loss.backward()
    ref.backward()
    assert torch.allclose(values(ours.method.prefix.grad), values(table.grad), atol=1e-5)
    with torch.no_grad():  # with non-zero keys they differ: the positions do matter then
        ours.method.prefix.view(3, 2, 2, h, d)[:, :, 0] = 1.0
        table.copy_(ours.method.prefix)
        assert not torch.allclose(ours(one)[0], peft_loss(theirs, one), atol=1e-4)


# ---- configs ----

def test_local_checkpoint_is_recognised_as_causal(tmp_path):
    backbone, tok = load_backbone(OmegaConf.create(BACKBONES["llama"]))
    backbone.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = OmegaConf.create(dict(build="local", name_or_path=str(tmp_path), tokenizer=None))
    model = build_model(cfg, OmegaConf.create(method_cfg("lora", "llama")))
    assert isinstance(model, CausalLM)
    ref = make("lora", "llama").eval()
    batch = batch_for(ref)
    assert torch.allclose(model.eval().score(batch)[0], ref.score(batch)[0], atol=1e-6)


def test_hub_preset_fails_offline_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.load("conf/model/qwen2_5_0_5b.yaml")
    with pytest.raises(MMPTError) as err:
        load_backbone(cfg)
    assert "Qwen/Qwen2.5-0.5B" in str(err.value) and "\n" not in str(err.value)
