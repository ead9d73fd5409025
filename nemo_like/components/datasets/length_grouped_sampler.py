"""``group_by_length``: batches of rows of similar length, in a random but reproducible order.

Why: with padding to the longest row of a batch, mixing a 20-token and a 500-token row
wastes most of the batch. Each epoch the indices are shuffled (seeded by seed + epoch),
cut into mega-batches of ``batch_size * mega_batch_mult`` rows, and each mega-batch is
sorted by length, longest first; batches drawn in order from that list hold rows of
similar length while the data order still changes from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from nemo_like.components.datasets.llm.tokenized_dataset import TokenizedDataset


def sample_lengths(dataset: Any) -> Sequence[int]:
    """Number of real tokens of every sample (``attention_mask`` ones, else ``input_ids``); read from the token
    table's arrays when the dataset has one."""
    if isinstance(dataset, TokenizedDataset):
        return dataset.lengths
    lengths = []
    for idx in range(len(dataset)):
        sample = dataset[idx]
        mask = sample.get("attention_mask")
        lengths.append(int(sum(mask)) if mask is not None else len(sample["input_ids"]))
    return lengths


class LengthGroupedSampler(Sampler[int]):
    """Shuffled mega-batches, each sorted by length; resumable (``state_dict``) and epoch-aware (``set_epoch``)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50) -> None:
        if batch_size <= 0 or mega_batch_mult <= 0:
            raise ValueError("group_by_length: batch_size and mega_batch_mult must be positive")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0
        self.yielded = 0  # indices of the current epoch already handed out

    def order(self, epoch: int) -> list[int]:
        """The index order of one epoch."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.lengths), generator=generator).numpy()
        size = self.batch_size * self.mega_batch_mult
        group = np.arange(len(perm)) // size
        # Within each mega-batch, longest first; equal lengths keep their shuffled order (a stable sort).
        return perm[np.lexsort((-self.lengths[perm], group))].tolist()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.yielded = epoch, 0

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        while self.yielded < len(order):
            self.yielded += 1
            yield order[self.yielded - 1]
        self.epoch, self.yielded = self.epoch + 1, 0  # a fresh pass, if nobody sets the epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])
