"""BatchEncoder's shortcuts give the ids a plain tokenizer call gives: pieces joined at added tokens, split back."""

from __future__ import annotations

import random

import pytest

from nemo_like.components.datasets.llm.batch_encoder import BatchEncoder
from conftest import build_tiny_tokenizer

WORDS = ["hello", " world", "\n", "\n\n", "  ", "x", " 42", "café", "{k: v}", "<|im_start|>", "<|im_end|>",
         "<|im_start|>assistant\n", "<|im_end|>\n", "<|endoftext|>", "<|im_start|><|im_start|>", ""]


def _rows(seed: int, n: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [["".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 9))]
            for _ in range(n)]


def _plain(tokenizer, rows):
    return [[list(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else [] for t in texts] for texts in rows]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from nemo_like._transformers.tokenizer import build_tokenizer

    return build_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_of_pieces_with_added_tokens_anywhere_are_tokenized_as_each_piece_alone(smollm2_tokenizer, seed):
    encoder = BatchEncoder(smollm2_tokenizer)
    rows = _rows(seed, 300)
    assert encoder.encode_rows(rows) == _plain(smollm2_tokenizer, rows)
    assert encoder._grouped  # the joined path was taken, not the fallback


def test_chat_pieces_are_joined_at_each_turn_and_split_back(smollm2_tokenizer):
    encoder = BatchEncoder(smollm2_tokenizer)
    row = ["<|im_start|>user\nhi<|im_end|>\n", "<|im_start|>assistant\n", "hello<|im_end|>\n",
           "<|im_start|>user\nsay <|im_start|> twice<|im_end|>\n", "<|im_start|>assistant\n", " ok\n\n<|im_end|>\n"]
    words, starts = encoder._join(row)
    assert len(words) == 3 and [len(s) for s in starts] == [1, 2, 0]  # three pre-split words, not six
    assert encoder.encode_rows([row, row[:1], []]) == _plain(smollm2_tokenizer, [row, row[:1], []])


def test_a_tokenizer_whose_added_tokens_contain_one_another_counts_them_as_it_splits():
    tokenizer = build_tiny_tokenizer()  # its own: the shared one is not to be changed
    tokenizer.add_tokens(["<|x|>", "<|x|>y"], special_tokens=True)
    encoder = BatchEncoder(tokenizer)
    assert encoder._nested
    rows = [["a<|x|>yb", "<|x|>c", "<|x|>y<|x|>", "<|x|>yd"], ["<|x|>", "<|x|>y"]]
    assert encoder.encode_rows(rows) == _plain(tokenizer, rows)


def test_rows_tokenized_whole_are_cut_back_only_where_each_piece_keeps_its_own_tokens(smollm2_tokenizer):
    """Each row goes to the tokenizer as one text; a cut the checks cannot show exact sends that row piece by piece."""
    encoder = BatchEncoder(smollm2_tokenizer)
    assert encoder._whole
    rows = _rows(3, 400) + [["<|im_start|>assistant\n", "\nHello"], ["<|im_start|>user\nhi \n", "there"],
                            ["<|im_start|>assistant\n", " 42", "  x", "\n\n"]]
    whole = encoder._whole_rows(rows)
    assert 0 < sum(pieces is None for pieces in whole) < len(rows)  # both ways are exercised
    assert encoder.encode_rows(rows) == _plain(smollm2_tokenizer, rows)


def _with_pre_tokenizer(pre_tokenizer, normalizer=None):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    return tok


def test_only_pre_tokenizers_that_read_forward_let_a_row_be_tokenized_whole():
    from tokenizers import Regex, normalizers, pre_tokenizers as pt

    from nemo_like.components.datasets.llm.batch_encoder import reads_no_text_before_a_word

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
    forward = [pt.ByteLevel(add_prefix_space=False),
               pt.Sequence([pt.Split(Regex(llama3), "isolated"), pt.ByteLevel(add_prefix_space=False, use_regex=False)]),
               pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]),
               pt.Whitespace()]
    not_forward = [pt.ByteLevel(add_prefix_space=True), pt.Metaspace(), pt.Split(Regex(r"(?<=a)b"), "isolated"),
                   pt.Split(Regex(r"^\s+"), "isolated"), pt.Split(Regex(r"\bx"), "isolated")]
    assert all(reads_no_text_before_a_word(_with_pre_tokenizer(p)) for p in forward)
    assert not any(reads_no_text_before_a_word(_with_pre_tokenizer(p)) for p in not_forward)
    assert not reads_no_text_before_a_word(_with_pre_tokenizer(pt.ByteLevel(add_prefix_space=False), normalizers.NFC()))
    assert not reads_no_text_before_a_word(_with_pre_tokenizer(None))
