"""Synthetic variable-length sentences for benchmarking the data and training path without a dataset.

Why: a throughput run should not depend on a download or a tokenizer. Each sample is one
"sentence" of random token ids whose length is drawn from a normal distribution, ending with
the EOS id; ids 0 and 1 are reserved for padding and EOS. Items have this library's shape
(pre-shifted ``input_ids`` / ``labels``, every target supervised, EOS included), so they can
be padded by the default collater or packed like any other dataset.
"""

from __future__ import annotations

import random
from typing import Any

from torch.utils.data import Dataset

PAD_ID, EOS_ID = 0, 1


class MockSentences(Dataset):
    """The samples of :func:`build_unpacked_dataset`, held in memory."""

    pad_token_id = PAD_ID

    def __init__(self, samples: list[dict[str, list[int]]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        sample = self.samples[idx]
        return {key: list(values) for key, values in sample.items()}


def build_unpacked_dataset(
    *,
    num_sentences: int = 10,
    mean_len: float = 20.0,
    std_len: float = 6.0,
    vocab_size: int = 100,
    max_sentence_len: int = 64,
    seed: int = 0,
    tokenizer: Any = None,
) -> MockSentences:
    """``num_sentences`` random sentences of about ``mean_len`` ± ``std_len`` tokens (1 to ``max_sentence_len``).

    Token ids are drawn from ``2 .. vocab_size - 1``; the same ``seed`` gives the same data
    (a private generator: the run's RNG is left alone). ``tokenizer`` is accepted and not
    used: the ids are synthetic.
    """
    del tokenizer
    if vocab_size < 3:
        raise ValueError(f"dataset.vocab_size: needs at least 3 ids (pad, eos and one token), got {vocab_size}")
    if num_sentences < 1 or max_sentence_len < 1:
        raise ValueError("dataset.num_sentences and dataset.max_sentence_len: must be at least 1")
    rng = random.Random(seed)
    samples = []
    for _ in range(int(num_sentences)):
        n = max(1, min(int(max_sentence_len), int(rng.gauss(mean_len, std_len))))
        tokens = [rng.randrange(2, vocab_size) for _ in range(n)] + [EOS_ID]
        samples.append({"input_ids": tokens[:-1], "labels": tokens[1:], "attention_mask": [1] * n,
                        "position_ids": list(range(n))})
    return MockSentences(samples)
