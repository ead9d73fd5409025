"""An endless-looking stream of random token batches, for benchmarking model throughput.

Why: measuring step time should not wait on data. Each item is already a batch of
``batch_size`` rows of ``seq_len`` random ids, pre-shifted (``labels`` is the next id, -100
at the last position) with ``position_ids``; the default collater joins such items along
the batch axis, so a loader's ``batch_size`` of k yields ``k * batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from nemo_like.components.batch import IGNORE_INDEX


class MockIterableDataset(IterableDataset):
    """``num_samples`` items of ``[batch_size, seq_len]`` random ids in ``0 .. vocab_size - 1``."""

    def __init__(self, vocab_size: int = 1024, seq_len: int = 1024, num_samples: int = 1000000,
                 batch_size: int = 1) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("num_samples", num_samples),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dataset.{name}: expected a positive integer, got {value!r}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.num_samples):
            tokens = torch.randint(0, self.vocab_size, (self.batch_size, self.seq_len))
            labels = torch.full_like(tokens, IGNORE_INDEX)
            labels[:, :-1] = tokens[:, 1:]
            positions = torch.arange(self.seq_len).unsqueeze(0).expand(self.batch_size, -1).clone()
            yield {"input_ids": tokens, "labels": labels, "position_ids": positions}

    def __len__(self) -> int:
        return self.num_samples
