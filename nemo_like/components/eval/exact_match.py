"""Generation-based exact-match accuracy for instruction rows.

The quickstart judges a fine-tune by what the model *writes*, not by its loss: each held-out row is
rendered exactly as the instruction dataset renders it for training, the model answers greedily,
and the stripped answer must equal the stripped reference. Generation is batched with left
padding so that every prompt ends at the same position and new tokens line up across the batch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nemo_like.components.training.cpu_threads import decoding_threads


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
    """A canonical column (context/question/answer) of a row, "" when absent.

    With a mapping only the mapped columns are read, as the instruction dataset does (an
    unmapped ``context`` column in the file is ignored); without one the canonical names are used.
    """
    key = name if column_mapping is None else column_mapping.get(name)
    value = None if key is None else row.get(key)
    return "" if value is None else str(value)


def _uses_chat_template(tokenizer: Any, use_chat_template: bool) -> bool:
    """The dataset falls back to the plain prompt when the tokenizer has no template; so do we."""
    return use_chat_template and getattr(tokenizer, "chat_template", None) is not None


def _user_text(row: dict, column_mapping: dict | None) -> str:
    parts = [_column(row, column_mapping, "context"), _column(row, column_mapping, "question")]
    return " ".join(p for p in parts if p)


def build_prompt(
    row: dict,
    tokenizer: Any,
    column_mapping: dict | None = None,
    use_chat_template: bool = True,
) -> str:
    """Render a row's prompt text the same way the instruction dataset does for training.

    Matching the training rendering matters: any drift (a missing space, a different system turn)
    changes what the model conditions on and makes the measured accuracy meaningless.
    With a chat template: one user turn holding the non-empty context and question joined by a
    space, followed by the assistant header. Without one: that text followed by a space.
    """
    user_text = _user_text(row, column_mapping)
    if _uses_chat_template(tokenizer, use_chat_template):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )
    return user_text + " "


def encode_prompt(
    row: dict,
    tokenizer: Any,
    column_mapping: dict | None = None,
    use_chat_template: bool = True,
) -> list[int]:
    """Token ids of a row's prompt, produced by the same calls the instruction dataset makes.

    Going through the same calls (rather than re-tokenizing rendered text) rules out any
    difference in special-token handling between training and evaluation.
    """
    user_text = _user_text(row, column_mapping)
    if _uses_chat_template(tokenizer, use_chat_template):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]
    return list(tokenizer(user_text + " ", add_special_tokens=True)["input_ids"])


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


def _common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the token prefix shared by every sequence, leaving each at least one own token."""
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _cache_name(model: Any) -> str:
    """transformers 5 names the key/value cache ``cache`` (``past_key_values`` is deprecated there); older
    releases and custom models keep ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.inference_mode()
def _generate_batch(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    share_prefix: bool,
) -> list[list[int]]:
    """Greedy-decode one batch of tokenized prompts; return only the new token ids per row.

    Prompts are left-padded so every row's last prompt token sits in the same column. When the
    rows share a leading run of tokens (the chat template's system turn, a fixed instruction),
    that run is encoded once and its key/value cache is copied to every row: on CPU the prompt
    encoding dominates evaluation time and the shared run is often half of it. The padding then
    sits between the shared run and each row's own tokens; the attention mask hides it and the
    position ids (derived from the mask) stay those of the unpadded prompt, so answers are the
    same as one-at-a-time generation.
    """
    device = next(model.parameters()).device
    batch = len(prompts)
    shared = _common_prefix_len(prompts) if share_prefix else 0
    width = max(len(p) for p in prompts) - shared
    input_ids = torch.full((batch, shared + width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, shared + width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        own = ids[shared:]
        input_ids[i, :shared] = torch.tensor(ids[:shared], dtype=torch.long)
        attention_mask[i, :shared] = 1
        input_ids[i, shared + width - len(own) :] = torch.tensor(own, dtype=torch.long)
        attention_mask[i, shared + width - len(own) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    extra: dict[str, Any] = {}
    if shared > 0:
        out = model(input_ids=input_ids[:1, :shared], use_cache=True)
        name = _cache_name(model)
        cache = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(batch)
            extra[name] = cache
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
        **extra,
    )
    results = []
    for seq in out[:, input_ids.shape[1] :].tolist():
        # Cut at the first end-of-turn: what follows is padding or a runaway continuation.
        for j, tok in enumerate(seq):
            if tok in eos_ids:
                seq = seq[:j]
                break
        results.append(seq)
    return results


def generation_exact_match(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    column_mapping: dict | None = None,
    use_chat_template: bool = True,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    num_examples: int = 5,
    share_prefix: bool = True,
    judge: Callable[..., bool] | None = None,
    on_batch: Callable[[int], Any] | None = None,
    adapt_threads: bool = True,
) -> dict:
    """Greedy-generate an answer for every row and score ``generated.strip() == answer.strip()``, or
    ``judge(generated)`` / ``judge(generated, row)`` when given (a behaviour a script can check: a format, a style).

    Rows are batched in order of prompt length (less padding, faster on CPU) and scored in their
    original order. The model is switched to eval mode and back, and the tokenizer is never
    modified, so this can run in the middle of training. ``share_prefix=False`` turns off the
    shared-prefix cache (see ``_generate_batch``), e.g. to compare timings. ``on_batch(rows)`` is called
    after each batch with its number of rows (progress lines).

    On a CPU the decoding runs on no more intra-op threads than other processes leave cores free
    (:func:`~nemo_like.components.training.cpu_threads.decoding_threads`); ``adapt_threads=False`` keeps
    the caller's count (answers that must not depend on the machine's load, timings to compare).

    Returns ``{"accuracy", "n", "correct", "examples", "threads"}`` where ``examples`` holds the first
    ``num_examples`` rows as ``{"prompt", "expected", "got"}`` for a quick visual check, and ``threads``
    the intra-op threads the decoding ran on.
    """
    if not rows:
        return {"accuracy": 0.0, "n": 0, "correct": 0, "examples": [], "threads": torch.get_num_threads()}
    prompts = [build_prompt(r, tokenizer, column_mapping, use_chat_template) for r in rows]
    expected = [_column(r, column_mapping, "answer").strip() for r in rows]
    encoded = [encode_prompt(r, tokenizer, column_mapping, use_chat_template) for r in rows]

    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else 0
    was_training = model.training
    generated: list[str] = [""] * len(rows)
    with decoding_threads(next(model.parameters()).device, enabled=adapt_threads) as threads:
        try:
            model.eval()
            order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                new_ids = _generate_batch(
                    model, [encoded[i] for i in idx], max_new_tokens, eos_ids, pad_id, share_prefix
                )
                for i, ids in zip(idx, new_ids):
                    generated[i] = tokenizer.decode(ids, skip_special_tokens=True)
                if on_batch is not None:
                    on_batch(len(idx))
        finally:
            if was_training:
                model.train()

    if judge is None:
        correct = sum(int(g.strip() == e) for g, e in zip(generated, expected))
    else:
        takes_row = len(inspect.signature(judge).parameters) > 1
        correct = sum(int(bool(judge(g, row) if takes_row else judge(g))) for g, row in zip(generated, rows))
    examples = [
        {"prompt": prompts[i], "expected": expected[i], "got": generated[i].strip()}
        for i in range(min(num_examples, len(rows)))
    ]
    return {"accuracy": correct / len(rows), "n": len(rows), "correct": correct, "examples": examples,
            "threads": threads}
