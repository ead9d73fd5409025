"""Held-out accuracy of a vision-language model on short-answer questions, and the image-blind baseline.

A VLM fine-tune is judged by what it writes about pictures it has not seen: each held-out
conversation is cut before its last assistant turn (earlier turns kept, answers included),
rendered with the processor's chat template and the generation prompt, and the model answers
greedily. The baseline ``answer_prior_accuracy`` is what a model that ignores the pixels can
reach at best (the most frequent training answer to each question), so "chance" on a task whose
answers are not uniform is measured rather than guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content.strip()
    return "".join(p["text"] for p in content if p.get("type") == "text").strip()


def last_turn(conversation: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The messages before the last assistant turn and that turn's reference text."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last], _text(conversation[last])


def question_of(prompt: list[dict[str, Any]]) -> str:
    """The text of the last user message: what is asked, without the picture."""
    return next((_text(m) for m in reversed(prompt) if m["role"] == "user"), "")


def normalize_answer(text: str) -> str:
    """Case, surrounding whitespace and a trailing period do not make an answer wrong."""
    text = text.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def _images(messages: list[dict[str, Any]]) -> list[Any]:
    return [p["image"] for m in messages if not isinstance(m["content"], str)
            for p in m["content"] if p.get("type") == "image"]


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a turn: the tokenizer's eos and the generation config's."""
    found: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in found:
                found.append(int(token))
    return found


@torch.inference_mode()
def vlm_answers(model: Any, processor: Any, prompts: Sequence[list[dict[str, Any]]], max_new_tokens: int = 8,
                batch_size: int = 16) -> list[str]:
    """Greedy answers to conversation prefixes, left-padded in batches, each cut at its first end-of-turn."""
    tokenizer = processor.tokenizer
    stops = _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    answers: list[str] = []
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
            images = [_images(p) for p in chunk]
            kwargs: dict[str, Any] = {"images": images} if any(images) else {}
            inputs = processor(text=texts, padding=True, padding_side="left", add_special_tokens=False,
                               return_tensors="pt", **kwargs)
            inputs = {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
                      for k, v in inputs.items()}
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 temperature=None, top_p=None, top_k=None, eos_token_id=stops, pad_token_id=pad_id)
            for row in out[:, inputs["input_ids"].shape[1]:].tolist():
                end = next((j for j, token in enumerate(row) if token in stops), len(row))
                answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def vlm_exact_match(model: Any, processor: Any, dataset: Any, max_new_tokens: int = 8, batch_size: int = 16) -> float:
    """Fraction of ``dataset`` items (``{"conversation": [...]}``) whose last answer the model writes exactly
    (after ``normalize_answer``)."""
    turns = [last_turn(dataset[i]["conversation"]) for i in range(len(dataset))]
    if not turns:
        return 0.0
    got = vlm_answers(model, processor, [p for p, _ in turns], max_new_tokens, batch_size)
    return sum(normalize_answer(g) == normalize_answer(ref) for g, (_, ref) in zip(got, turns)) / len(turns)


def answer_prior_accuracy(train_dataset: Any, eval_dataset: Any) -> float:
    """Accuracy on ``eval_dataset`` of the best image-blind guess: per question text, the most frequent
    training answer (every assistant turn of the training data counts)."""
    counts: dict[str, Counter[str]] = {}
    for i in range(len(train_dataset)):
        conversation = train_dataset[i]["conversation"]
        for k, message in enumerate(conversation):
            if message["role"] == "assistant":
                counts.setdefault(question_of(conversation[:k]), Counter())[normalize_answer(_text(message))] += 1
    turns = [last_turn(eval_dataset[i]["conversation"]) for i in range(len(eval_dataset))]
    if not turns:
        return 0.0
    guess = {question: seen.most_common(1)[0][0] for question, seen in counts.items()}
    return sum(guess.get(question_of(p)) == normalize_answer(ref) for p, ref in turns) / len(turns)
