"""Behaviour of every baseline method on a tiny T5: learning, gradients, identity at init, I/O."""
import pytest
import torch

from conftest import METHOD_CFGS, fit_batch, make_model, toy_batch
from mmpt.engine import checkpoint
from mmpt.errors import CheckpointError, ConfigError

METHODS = sorted(METHOD_CFGS)
LRS = {"full": 3e-3, "prompt_tuning": 0.3, "prefix": 0.05, "lora": 1e-2}


def trained(name, steps=25):
    model = make_model(name)
    batch = toy_batch(model.tokenizer)
    return model, batch, fit_batch(model, batch, LRS[name], steps)


@pytest.mark.parametrize("name", METHODS)
def test_loss_falls_on_a_fixed_batch(name):
    _, _, losses = trained(name)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_exactly_the_trainable_parameters(name):
    model = make_model(name)
    groups = model.method.param_groups()
    in_groups = {id(p) for ps in groups.values() for p in ps}
    loss, _ = model(toy_batch(model.tokenizer))
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in in_groups) == p.requires_grad, n
    for group, params in groups.items():  # each group really moves the loss
        assert any(p.grad.abs().sum() > 0 for p in params), group


def test_zero_initialised_lora_leaves_outputs_unchanged():
    lora = make_model("lora").eval()
    batch = toy_batch(lora.tokenizer)
    assert len(lora.method._layers) == 2 * 2 + 2 * 2 * 2  # q, v of 2 encoder + 2 x (self, cross) decoder attentions
    with torch.no_grad():
        adapted, _ = lora.score(batch)
        for layer in lora.method._layers:  # unwrap: the plain backbone
            parent = next(m for m in lora.backbone.modules() if layer in m.children())
            name = next(n for n, c in parent.named_children() if c is layer)
            setattr(parent, name, layer.base)
        plain, _ = lora.score(batch)
    assert torch.equal(adapted, plain)


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    model, batch, _ = trained(name, steps=3)
    model.eval()
    before, _ = model.score(batch)
    checkpoint.save(tmp_path / "ck", model, {"method": name})
    fresh = make_model(name, seed=1).eval()
    assert not torch.equal(fresh.score(batch)[0], before)
    checkpoint.load_weights(tmp_path / "ck", fresh)
    assert torch.equal(fresh.score(batch)[0], before)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    checkpoint.save(tmp_path / "ck", make_model("prefix"), {"method": "prefix"})
    with pytest.raises(CheckpointError, match="method `prefix`"):
        checkpoint.load_weights(tmp_path / "ck", make_model("lora"))
    bigger = dict(METHOD_CFGS["prefix"], num_virtual_tokens=5)
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load_weights(tmp_path / "ck", make_model(bigger))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    model = make_model("prefix")
    checkpoint.save(tmp_path / "last", model, {"method": "prefix"})
    (tmp_path / "last").rename(tmp_path / "last.old")  # crash between the two renames
    (tmp_path / "last.tmp").mkdir()  # and a half-written new one
    assert checkpoint.find(tmp_path / "last") == tmp_path / "last.old"
    with pytest.raises(CheckpointError, match="not a complete"):
        checkpoint.load_weights(tmp_path / "last.tmp", model)


def test_rank_scores_agree_with_the_loss():
    model = make_model("prefix").eval()
    batch = toy_batch(model.tokenizer, texts=("one example",), labels=(1,))
    scores, _ = model.score(batch)
    loss, _ = model(batch)
    n_tokens = (batch["labels"] != -100).sum()
    assert torch.allclose(scores[0, 1], -loss * n_tokens, atol=1e-4)


@pytest.mark.parametrize("name", ["prefix", "prompt_tuning"])
def test_greedy_generation_matches_teacher_forcing(name):
    """Cached step-by-step decoding (with prefixes) reproduces the argmax of a full forward."""
    model, batch, _ = trained(name, steps=5)
    model.eval()
    ids, _ = model.generate(batch, max_new_tokens=4)
    start = torch.full((ids.shape[0], 1), model.backbone.config.decoder_start_token_id)
    kw, _ = model.method.prepare(batch, model.backbone)
    logits = model.backbone(**kw, decoder_input_ids=torch.cat([start, ids[:, :-1]], 1)).logits
    greedy = logits.argmax(-1)
    for row, out in zip(greedy, ids):  # compare up to and including the first EOS
        n = (out == model.eos_id).nonzero()[0].item() + 1 if (out == model.eos_id).any() else len(out)
        assert torch.equal(row[:n], out[:n])


@pytest.mark.parametrize("key,cfg", [
    ("method.placement", dict(METHOD_CFGS["prefix"], placement="middle")),
    ("method.num_virtual_tokens", dict(METHOD_CFGS["prefix"], num_virtual_tokens=0)),
    ("method.target_modules", dict(METHOD_CFGS["lora"], target_modules="nothing")),
    ("method.name", {"name": "bitfit"}),
])
def test_bad_method_config_names_the_key(key, cfg):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_model(cfg)


def t5_tokenizer():
    """A T5 tokenizer (SentencePiece pieces, 100 <extra_id_*> specials) over a made-up vocabulary,
    since no T5 vocabulary ships offline: word pieces mixed with punctuation, digits, "▁" alone."""
    from transformers import T5Tokenizer

    pieces = ["▁the", ",", "▁a", ".", "s", "▁movie", "▁3", "ing", "!", "▁funny", "1", "▁and", "-", "▁sad",
              "'", "▁it", "ed", "▁2", "▁is", "?"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(p, -2.0 - i) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=100)


@pytest.mark.parametrize("which", ["minilm", "t5"])
def test_vocab_init_copies_embeddings_of_word_tokens_only(which):
    """init=vocab draws among plain word tokens: never special, [unused*], <extra_id_*>, "##"
    pieces, punctuation or digits (WordPiece has 999 such ids below 5000; T5 adds 100 extra ids)."""
    from mmpt.methods.prompt_tuning import init_tokens
    from mmpt.models.backbone import load_tokenizer, minilm_dir

    tok = load_tokenizer(minilm_dir()) if which == "minilm" else t5_tokenizer()
    rows = len(tok) + 28  # T5 checkpoints have more embedding rows than tokens
    embedding = torch.nn.Embedding(rows, 2)
    embedding.weight.data[:, 0] = torch.arange(rows)  # a row's first entry is its id

    def drawn(seed):
        torch.manual_seed(seed)
        return init_tokens(400, embedding, "vocab", tok)[:, 0].long().tolist()

    ids = drawn(0)
    assert ids == drawn(0) and ids != drawn(1)  # seeded
    tokens = tok.convert_ids_to_tokens(ids)
    assert not set(ids) & set(tok.all_special_ids)
    assert not [t for t in tokens if t.startswith(("[unused", "<extra_id", "##")) or t in ("[UNK]", "<unk>")]
    assert all(tok.decode([i]).strip().isalpha() for i in ids), tokens
    if which == "minilm":  # spread over the 5,000 most common words (the 5,000th is id 7786)
        assert len(set(ids)) > 300 and max(ids) < 8000
    else:
        assert set(tokens) <= {"▁the", "▁a", "s", "▁movie", "ing", "▁funny", "▁and", "▁sad", "▁it", "ed", "▁is"}


def test_prompt_tuning_starts_from_word_embeddings_of_the_models_tokenizer():
    model = make_model("prompt_tuning")
    table = model.backbone.get_input_embeddings().weight
    prompt = model.method.prompt.detach()
    ids = [int((table == row).all(-1).nonzero()[0]) for row in prompt]
    assert all(model.tokenizer.decode([i]).strip().isalpha() for i in ids), model.tokenizer.convert_ids_to_tokens(ids)
