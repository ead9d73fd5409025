"""Generation-based exact-match accuracy for instruction rows.

The quickstart judges a fine-tune by what the model *writes*, not by its loss: each held-out row is
rendered exactly as the instruction dataset renders it for training, the model answers greedily,
and the stripped answer must equal the stripped reference. Generation is batched with left
padding so that every prompt ends at the same position and new tokens line up across the batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

_CANONICAL_COLUMNS = ("context", "question", "answer")


def load_jsonl_rows(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read a JSONL file into a list of dicts (blank lines skipped); ``limit`` keeps the first N.

    Kept dependency-free so evaluation can run without ``datasets`` or a network.
    """
    rows: list[dict] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _column(row: dict, column_mapping: dict | None, name: str) -> str:
    """Fetch a canonical column (context/question/answer) through the optional mapping."""
    key = (column_mapping or {}).get(name, name)
    value = row.get(key)
    return "" if value is None else str(value)


def build_prompt(
    row: dict,
    tokenizer: Any,
    column_mapping: dict | None = None,
    use_chat_template: bool = True,
) -> str:
    """Render a row's prompt the same way the instruction dataset does for training.

    Matching the training rendering matters: any drift (a missing space, a different system turn)
    changes what the model conditions on and makes the measured accuracy meaningless.
    With a chat template: one user turn holding the non-empty context and question joined by a
    space, followed by the assistant header. Without one: ``"{context} {question} "``.
    """
    parts = [_column(row, column_mapping, "context"), _column(row, column_mapping, "question")]
    user_text = " ".join(p for p in parts if p)
    if use_chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )
    return user_text + " "


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Collect every token id that ends a turn (tokenizer eos plus generation-config eos)."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(gen_cfg.eos_token_id)
    for cand in candidates:
        for value in cand if isinstance(cand, (list, tuple)) else [cand]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return ids


@torch.inference_mode()
def _generate_batch(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, eos_ids: list[int], pad_id: int
) -> list[str]:
    """Greedy-decode one left-padded batch and return only the newly generated text."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    new_tokens = out[:, input_ids.shape[1] :].tolist()
    texts = []
    for seq in new_tokens:
        # Cut at the first end-of-turn: tokens after it are padding or a runaway continuation.
        for i, tok in enumerate(seq):
            if tok in eos_ids:
                seq = seq[:i]
                break
        texts.append(tokenizer.decode(seq, skip_special_tokens=True))
    return texts


def generation_exact_match(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    column_mapping: dict | None = None,
    use_chat_template: bool = True,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    num_examples: int = 5,
) -> dict:
    """Greedy-generate an answer for every row and score ``generated.strip() == answer.strip()``.

    Rows are processed in batches sorted by prompt length (less padding, faster on CPU), then
    scored in their original order. The model is put in eval mode and restored afterwards, and
    the tokenizer's padding side is restored, so this can be called in the middle of training.

    Returns ``{"accuracy", "n", "correct", "examples"}`` where ``examples`` holds the first
    ``num_examples`` rows as ``{"prompt", "expected", "got"}`` for a quick visual check.
    """
    if not rows:
        return {"accuracy": 0.0, "n": 0, "correct": 0, "examples": []}
    prompts = [build_prompt(r, tokenizer, column_mapping, use_chat_template) for r in rows]
    expected = [_column(r, column_mapping, "answer").strip() for r in rows]

    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else 0
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    was_training = model.training
    generated: list[str] = [""] * len(rows)
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
        model.eval()
        lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(rows)), key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            texts = _generate_batch(
                model, tokenizer, [prompts[i] for i in idx], max_new_tokens, eos_ids, pad_id
            )
            for i, text in zip(idx, texts):
                generated[i] = text
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
        if was_training:
            model.train()

    correct = sum(int(g.strip() == e) for g, e in zip(generated, expected))
    examples = [
        {"prompt": prompts[i], "expected": expected[i], "got": generated[i].strip()}
        for i in range(min(num_examples, len(rows)))
    ]
    return {"accuracy": correct / len(rows), "n": len(rows), "correct": correct, "examples": examples}
