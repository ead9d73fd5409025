"""SQuAD-style question answering -> pre-shifted tokens with the loss on the answer only.

A row holds ``id, title, context, question, answers: {text: [...], answer_start: [...]}`` (the
hub's ``rajpurkar/squad`` shape). The prompt is ``"Context: {context} Question: {question}
Answer: "`` and the target is the first answer text, stripped; a row without answers (SQuAD
v2's unanswerable questions) has an empty target, so only the end of sequence is learnt.

Two renderings, chosen as the recipes expect: when the tokenizer has a chat template (or
``chat_template`` is given) the prompt is the user turn and the answer the assistant turn,
rendered by the template, and the assistant turn with its end-of-turn marker carries the loss
(see :class:`ChatDataset`). Without a template the text is the prompt (with the tokenizer's
BOS) followed by the answer and EOS, tokenized as two pieces so that the answer's first token
is the one a model generates after the prompt; the answer and EOS carry the loss.

``dataset_name`` is a hub id, or a local JSON / JSONL / Parquet file, a list of them, or a
folder of split files (``train.jsonl``, ``validation-*.parquet``) in which ``split`` picks
the files. A split slice (``validation[:100]``) slices the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset, parse_json_field
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on, pad_token_id_of, shift_and_pad
from nemo_like.components.datasets.local_splits import limit_within_split
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset

PROMPT = "Context: {context} Question: {question} Answer: "


def squad_prompt_and_answer(where: str, row: dict[str, Any]) -> tuple[str, str]:
    """The prompt text and the target text of one SQuAD row; a row of another shape names what it lacks."""
    missing = [key for key in ("question", "answers") if key not in row]
    if missing:
        raise DatasetError(f"{where}: a SQuAD row needs {missing}; the row has {sorted(row)}")
    for key in ("context", "question"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DatasetError(f"{where}: column '{key}' must be a string, got {type(row[key]).__name__}")
    answers = parse_json_field(where, "answers", row["answers"])
    texts = answers.get("text") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DatasetError(f"{where}: column 'answers' must be {{text: [strings], answer_start: [ints]}}, "
                           f"got {row['answers']!r:.60}")
    prompt = PROMPT.format(context=row.get("context") or "", question=row.get("question") or "")
    return prompt, texts[0].strip() if texts else ""


class SquadDataset(TokenizedDataset):
    """SQuAD rows as ``prompt + answer + EOS`` without a chat template; loss on the answer and EOS."""

    def __init__(self, path_or_dataset_id: str | Sequence[str], tokenizer: Any, split: str | None = None,
                 seq_length: int | None = None, padding: str | bool = "do_not_pad",
                 truncation: str | bool = "do_not_truncate", limit_dataset_samples: int | None = None,
                 max_length: int | None = None, num_proc: int | None = None, cache_dir: str | None = None) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        if tokenizer.eos_token_id is None:
            raise DatasetError("dataset: the tokenizer has no EOS token to end the answer with")
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.pad_to_seq_length = padding == "max_length"
        self.row_limit = RowLimit(tokenizer, max_length, seq_length, is_truncation_on(truncation),
                                  source=path_or_dataset_id)
        self.pad_token_id = pad_token_id_of(tokenizer)
        self._load_table(path_or_dataset_id, split, limit_dataset_samples, cache_dir, num_proc)

    def _settings(self) -> dict[str, Any] | None:
        return {"prompt": PROMPT}

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        prompt, answer = squad_prompt_and_answer(where, row)
        return Pieces([prompt, answer], [True, False])

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, list[int]] | None:
        prompt_ids, answer_ids = encoded
        eos = self.tokenizer.eos_token_id
        if len(prompt_ids) > 1 and prompt_ids[-1] == eos:  # tokenizers that end every text with EOS
            prompt_ids = prompt_ids[:-1]
        answer_ids = answer_ids + [eos]
        limit = self.row_limit.limit
        if limit is not None and len(prompt_ids) >= limit:
            raise DatasetError(f"{where}: the prompt alone is {len(prompt_ids)} tokens, not shorter than "
                               f"{self.row_limit.describe()}; truncation cuts only the answer")
        keep = self.row_limit.keep(where, len(prompt_ids) + len(answer_ids) - 1)
        answer_ids = answer_ids[: keep + 1 - len(prompt_ids)]
        return shift_and_pad(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids, None,
                             self.pad_token_id)


class SquadChatDataset(ChatDataset):
    """SQuAD rows as a user turn (the prompt) and an assistant turn (the answer), rendered by the chat template."""

    def conversation(self, where: str, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
        prompt, answer = squad_prompt_and_answer(where, row)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], None


def make_squad_dataset(
    tokenizer: Any,
    seq_length: int | None = None,
    limit_dataset_samples: int | None = None,
    fp8: bool = False,
    split: str = "train",
    dataset_name: str | Sequence[str] = "squad",
    padding: str | bool = False,
    truncation: str | bool = False,
    chat_template: str | None = None,
    start_of_turn_token: str | None = None,
    max_length: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> SquadDataset | SquadChatDataset:
    """The SQuAD dataset: chat-rendered when the tokenizer (or ``chat_template``) has a template, else plain.

    ``padding: max_length`` pads every item to ``seq_length`` (other values leave padding to the
    collater); ``truncation`` cuts a row longer than ``seq_length`` (without it such a row is an
    error naming it). ``fp8`` changes nothing in the data (fp8 padding is the collater's
    ``pad_seq_len_divisible``) and ``start_of_turn_token`` is not needed (turns are found by
    rendering); both are accepted so that recipes that carry them run. ``max_length`` is the
    model's context; ``num_proc`` / ``cache_dir`` as for every tokenized dataset.
    """
    del fp8, start_of_turn_token
    limit = limit_within_split(split, limit_dataset_samples)
    padding = "max_length" if padding == "max_length" else "do_not_pad"
    if chat_template is not None or getattr(tokenizer, "chat_template", None):
        return SquadChatDataset(dataset_name, tokenizer, split=split, seq_length=seq_length, padding=padding,
                                truncation=truncation, chat_template=chat_template, limit_dataset_samples=limit,
                                max_length=max_length, num_proc=num_proc, cache_dir=cache_dir)
    return SquadDataset(dataset_name, tokenizer, split=split, seq_length=seq_length, padding=padding,
                        truncation=truncation, limit_dataset_samples=limit, max_length=max_length,
                        num_proc=num_proc, cache_dir=cache_dir)
