"""Length-bucketed, reproducible batching and the DataLoader built on it."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmpt.data.collate import EncodedSplit, collate
from mmpt.errors import ConfigError


def num_batches(n: int | EncodedSplit, batch_size: int) -> int:
    """Batches in one epoch of n examples (the last partial batch counts)."""
    return math.ceil((n if isinstance(n, int) else len(n)) / batch_size)


class LengthBucketBatchSampler:
    """Lists of example indices, one per batch.

    Training (shuffle): a permutation drawn from (seed, epoch) is cut into chunks of
    batch_size * bucket_multiplier; with `bucket`, each chunk is sorted by length before being cut
    into batches, so a batch holds similar lengths (little padding) while which examples meet
    stays random; the batch order is then shuffled. Eval: in order, or longest first with
    `bucket` (the biggest batch comes first, so running out of memory shows at once)."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, bucket: bool = True,
                 seed: int = 0, bucket_multiplier: int = 50):
        if batch_size < 1:
            raise ConfigError("batch_size", f"expected a positive integer, got {batch_size}")
        if bucket_multiplier < 1:
            raise ValueError(f"bucket_multiplier must be >= 1, got {bucket_multiplier}")
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.bucket, self.seed, self.bucket_multiplier = bucket, seed, bucket_multiplier
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: list[int]) -> list[list[int]]:
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _by_length(self, indices: list[int], longest_first: bool = False) -> list[int]:
        return sorted(indices, key=lambda i: self.lengths[i], reverse=longest_first)  # stable

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = self._by_length(range(n), longest_first=True) if self.bucket else list(range(n))
            return self._cut(order)
        # SeedSequence mixes (seed, epoch) into one seed; seed + epoch would repeat across runs
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(mixed))
        order = torch.randperm(n, generator=generator).tolist()
        if not self.bucket:
            return self._cut(order)
        # chunk is a multiple of batch_size, so only the last chunk can end in a partial batch
        chunk, batches = self.batch_size * self.bucket_multiplier, []
        for start in range(0, n, chunk):
            batches += self._cut(self._by_length(order[start:start + chunk]))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return num_batches(len(self.lengths), self.batch_size)


def make_loader(split: EncodedSplit, batch_size: int, train: bool, seed: int = 0, epoch: int = 0,
                bucket: bool = True, skip: int = 0, pad_id: int | None = None,
                bucket_multiplier: int = 50) -> DataLoader:
    """Batches of one epoch (see collate for their keys). `skip` drops the first batches, to
    resume mid-epoch exactly: the batch list only depends on (seed, epoch), and nothing is
    tokenized again. pad_id: default the split's tokenizer pad id."""
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    sampler = LengthBucketBatchSampler(split.lengths, batch_size, shuffle=train, bucket=bucket,
                                       seed=seed, bucket_multiplier=bucket_multiplier)
    sampler.set_epoch(epoch)
    pad = split.pad_id if pad_id is None else pad_id
    # a list of index lists is a valid batch_sampler; the loader's len() is what remains
    return DataLoader(split, batch_sampler=sampler.batches()[skip:],
                      collate_fn=partial(collate, pad_id=pad), num_workers=0)
