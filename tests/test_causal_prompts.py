"""The prompt format of causal LMs on BPE vocabularies: a prompt's ids followed by a choice's are
the ids of `prompt + " " + choice`, so GPT-2-style BPE scores " yes" (its own token, not "yes"),
and rank scoring, the loss and generation all read that format. The tokenizers are trained here
on a few sentences: byte-level BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style word marks
with a BOS (Llama 2, Mistral)."""
import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from conftest import fit_batch
from mmpt.data import EncodedSplit, collate
from mmpt.data.base import Example
from mmpt.engine.evaluate import predict
from mmpt.models import build_model
from test_causal import BACKBONES

CORPUS = ["yes no maybe", "the answer is yes", "no it is not", "maybe so", "is the sky blue? yes",
          "the cat sat on the mat.", "birds fly south"] * 10
TEXTS = ["is the sky blue?", "the cat sat on the mat. ", "birds fly south\n"]  # trailing spaces are dropped
VERBALIZERS = ["yes", "no", "maybe so"]


def byte_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def word_marks():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama(tmp_path, vocab, method="full"):
    """llama_tiny on a vocabulary trained here (model.tokenizer=<dir>)."""
    {"bpe": byte_bpe, "marks": word_marks}[vocab]().save_pretrained(tmp_path / vocab)
    torch.manual_seed(0)
    return build_model(OmegaConf.create({**BACKBONES["llama"], "tokenizer": str(tmp_path / vocab)}),
                       OmegaConf.create({"name": method}))


def encoded(model):
    examples = [Example(id=str(i), text=t, label=i) for i, t in enumerate(TEXTS)]
    return EncodedSplit(examples, model.tokenizer, 64, VERBALIZERS)


@pytest.mark.parametrize("vocab", ["bpe", "marks"])
def test_prompt_then_choice_ids_are_the_ids_of_the_joined_text(tmp_path, vocab):
    model = llama(tmp_path, vocab)
    tok, split = model.tokenizer, encoded(model)
    for i, text in enumerate(TEXTS):
        prompt = split.input_ids[i]
        assert tok.eos_token_id not in prompt  # the answer continues the text: no EOS in between
        assert (prompt[0] == tok.bos_token_id) == (vocab == "marks")  # a BOS where the tokenizer adds one
        for v, choice in zip(VERBALIZERS, split.choices):
            assert choice[-1] == tok.eos_token_id
            assert prompt + choice[:-1] == tok(text.rstrip() + " " + v)["input_ids"], (text, v)
    if vocab == "bpe":  # " yes" is not "yes" in byte-level BPE: the test can tell the two apart
        assert split.choices[0][:-1] != tok("yes", add_special_tokens=False)["input_ids"]


def test_rank_scores_are_the_lm_log_likelihood_of_the_joined_text(tmp_path):
    model = llama(tmp_path, "bpe").eval()
    tok, split = model.tokenizer, encoded(model)
    scores, _ = model.score(collate([split[i] for i in range(len(TEXTS))], tok.pad_token_id))
    for i, text in enumerate(TEXTS):
        n = len(tok(text.rstrip())["input_ids"])
        for c, v in enumerate(VERBALIZERS):  # log p(" " + v + EOS | text), by the backbone alone
            ids = torch.tensor([tok(text.rstrip() + " " + v)["input_ids"] + [tok.eos_token_id]])
            logp = model.backbone(ids).logits.float().log_softmax(-1)[0, :-1]
            want = logp.gather(-1, ids[0, 1:, None])[n - 1:].sum()
            assert scores[i, c] == pytest.approx(want.item(), abs=1e-4), (text, v)


def test_generation_writes_the_continuation_that_rank_scoring_chose(tmp_path):
    model = llama(tmp_path, "bpe")
    tok, split = model.tokenizer, encoded(model)
    batch = collate([split[i] for i in range(len(TEXTS))], tok.pad_token_id)
    losses = fit_batch(model, batch, lr=1e-2, steps=40)
    assert losses[-1] < 0.05 < losses[0]
    choices_of = lambda i: VERBALIZERS
    ranked, _, _ = predict(model, [batch], choices_of, "rank")
    generated, texts, _ = predict(model, [batch], choices_of, "generate", max_new_tokens=5)
    assert ranked == generated == {0: 0, 1: 1, 2: 2}
    assert texts == {i: " " + v for i, v in enumerate(VERBALIZERS)}  # the leading space, then EOS


def test_length_norm_divides_by_the_choice_tokens(tmp_path):
    model = llama(tmp_path, "bpe").eval()
    batch = collate([encoded(model)[i] for i in range(len(TEXTS))], model.tokenizer.pad_token_id)
    plain, mean = model.score(batch)[0], model.score(batch, 1)[0]
    tokens = (batch["choice_ids"] != -100).sum(-1).float()
    assert tokens[0].tolist() == [2, 2, 3]  # " yes" EOS, " no" EOS, " maybe" " so" EOS
    assert torch.allclose(mean, plain / tokens, atol=1e-6)
