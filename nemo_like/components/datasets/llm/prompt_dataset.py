"""Prompts for reinforcement learning from verifiable rewards (GRPO): the text a policy answers, and its row.

Why its own dataset: RL data holds no answer to train on, only a prompt to generate from and the
columns a reward checks the generations against (a reference ``answer``, a countdown's ``nums`` and
``target``). So an item is the rendered prompt, its token ids, and every other column of the row,
untouched; the generator pads the prompts and the reward functions read the columns.

The ``prompt`` column holds a string or a message list (``[{"role": "system"|"user"|"assistant",
"content": str}]``), as TRL and Oumi read it. A message list is always rendered with the
tokenizer's chat template, ``add_generation_prompt=True``; a string is one user turn when
``use_hf_chat_template`` (the default: a chat model is prompted in the form it was tuned on), else
the raw text. ``system_prompt`` adds a system turn to conversations that have none.
``assistant_prefix`` (e.g. ``"The answer is"``) is appended verbatim after the generation prompt
(or the raw text), so the answer turn starts pre-filled and the model completes it. Text rendered
by the template is tokenized without adding special tokens (the template writes its own); raw
text with the tokenizer's defaults (its BOS, if it adds one).

Rows are read like every dataset here (local JSON/JSONL, Parquet, CSV or a hub id; HF-style
``split`` slices such as ``train[:100]``) and named ``file:line`` in errors. Prompt sets are small
(thousands of rows), so they are held in memory and tokenized in batches, with no token cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from nemo_like.components.datasets.arrow_rows import RowSource
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.chat_renderer import ChatRenderer

_ROLES = ("system", "user", "assistant")
_BATCH = 1024  # rows rendered and tokenized per tokenizer call


def _conversation(where: str, column: str, value: Any) -> list[dict[str, str]]:
    """A checked message list: role and string content in every turn, and a last turn the model answers."""
    if not value:
        raise DatasetError(f"{where}: column '{column}' is an empty message list")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(f"{where}: {column}[{i}] must be an object with 'role' and 'content', got "
                               f"{message!r:.80}")
        if message["role"] not in _ROLES:
            raise DatasetError(f"{where}: {column}[{i}].role {message['role']!r} is not one of {list(_ROLES)}")
        if not isinstance(message["content"], str):
            raise DatasetError(f"{where}: {column}[{i}].content must be a string, got "
                               f"{type(message['content']).__name__}")
    if value[-1]["role"] == "assistant":
        raise DatasetError(f"{where}: column '{column}' ends with an assistant turn; end it with a user turn "
                           "(assistant_prefix pre-fills the answer)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


class PromptDataset(Dataset):
    """``{"prompt_ids", "prompt", "columns", "index"}`` per row; see the module docstring."""

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        tokenizer: Any,
        prompt_column: str = "prompt",
        use_hf_chat_template: bool = True,
        assistant_prefix: str | None = None,
        system_prompt: str | None = None,
        split: str | None = None,
        limit_dataset_samples: int | None = None,
        seq_length: int | None = None,
        cache_dir: str | None = None,
        num_proc: int | None = None,
    ) -> None:
        """``cache_dir`` and ``num_proc`` are accepted so a section written for the other datasets builds this one;
        prompts are few, so they are tokenized in this process and not cached."""
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        if not isinstance(prompt_column, str) or not prompt_column:
            raise DatasetError(f"dataset.prompt_column: expected a column name, got {prompt_column!r}")
        for name, value in (("assistant_prefix", assistant_prefix), ("system_prompt", system_prompt)):
            if value is not None and not isinstance(value, str):
                raise DatasetError(f"dataset.{name}: expected a string, got {type(value).__name__}")
        if system_prompt is not None and not use_hf_chat_template:
            raise DatasetError("dataset.system_prompt: a system turn is rendered by the chat template; "
                               "set use_hf_chat_template: true")
        if seq_length is not None and (isinstance(seq_length, bool) or not isinstance(seq_length, int)
                                       or seq_length < 1):
            raise DatasetError(f"dataset.seq_length: expected a positive integer, got {seq_length!r}")
        if limit_dataset_samples is not None and (isinstance(limit_dataset_samples, bool)
                                                  or not isinstance(limit_dataset_samples, int)
                                                  or limit_dataset_samples < 1):
            raise DatasetError(f"dataset.limit_dataset_samples: expected a positive integer, "
                               f"got {limit_dataset_samples!r}")
        self.tokenizer = tokenizer
        self.prompt_column = prompt_column
        self.use_hf_chat_template = bool(use_hf_chat_template)
        self.assistant_prefix = assistant_prefix or ""
        self.system_prompt = system_prompt
        self.seq_length = seq_length
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self.renderer = ChatRenderer(tokenizer, self.chat_template) if self.chat_template else None
        if self.use_hf_chat_template and self.renderer is None:
            raise DatasetError("dataset.use_hf_chat_template: the tokenizer has no chat template; "
                               "set use_hf_chat_template: false to use the prompts as raw text")

        self.locations: list[str] = []
        self.prompts: list[str] = []
        self.prompt_ids: list[list[int]] = []
        self.columns: list[dict[str, Any]] = []
        rows = self._read(path_or_dataset_id, split, limit_dataset_samples)
        for start in range(0, len(rows), _BATCH):
            self._add(rows[start : start + _BATCH])
        if not self.prompts:
            raise DatasetError(f"{path_or_dataset_id}: no rows")

    # ------------------------------------------------------------------ building
    @staticmethod
    def _read(path_or_dataset_id: str | Sequence[str], split: str | None,
              limit: int | None) -> list[tuple[str, dict[str, Any]]]:
        """``(location, row)`` pairs, named as the other datasets name them (``file:line``, ``file[i]``, ``id[i]``)."""
        source = RowSource.of(path_or_dataset_id, split)
        rows: list[tuple[str, dict[str, Any]]] = []
        with tempfile.TemporaryDirectory(prefix="nemo_like_prompts_") as scratch:
            table = source.load(Path(scratch))
            n = len(table) if limit is None else min(limit, len(table))
            for start in range(0, n, _BATCH):
                batch = table[start : min(start + _BATCH, n)]
                for i in range(min(_BATCH, n - start)):
                    if source.paths is None:  # a hub dataset: its own columns, named by index
                        rows.append((source.where(0, start + i), {k: v[i] for k, v in batch.items()}))
                        continue
                    file, row, data = source.decode(batch, i, start + i)
                    rows.append((source.where(file, row), data))
            del table
        return rows

    def _render(self, where: str, row: dict[str, Any]) -> tuple[str, bool]:
        """The prompt text of one row, and whether the chat template rendered it (no reader of rows needs more)."""
        if self.prompt_column not in row:
            raise DatasetError(f"{where}: column '{self.prompt_column}' (prompt_column) is missing; "
                               f"the row has {sorted(row)}")
        value = row[self.prompt_column]
        if isinstance(value, str):
            if not value.strip():
                raise DatasetError(f"{where}: empty prompt (column '{self.prompt_column}')")
            if not self.use_hf_chat_template:
                return value + self.assistant_prefix, False
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list):
            messages = _conversation(where, self.prompt_column, value)
            if self.renderer is None:
                raise DatasetError(f"{where}: a message-list prompt needs a tokenizer with a chat template")
        else:
            raise DatasetError(f"{where}: column '{self.prompt_column}' must be a string or a message list, "
                               f"got {type(value).__name__}")
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        try:
            text = self.renderer.render([messages], add_generation_prompt=True)[0]
        except Exception as err:  # jinja's own errors, a template's raise_exception
            raise DatasetError(f"{where}: the chat template rejects this prompt ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
        return text + self.assistant_prefix, True

    def _add(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        rendered = [self._render(where, row) for where, row in rows]
        ids: list[list[int] | None] = [None] * len(rows)
        for templated in (True, False):  # one tokenizer call per special-token setting
            picked = [i for i, (_, t) in enumerate(rendered) if t == templated]
            if picked:
                encoded = self.tokenizer([rendered[i][0] for i in picked], add_special_tokens=not templated)
                for i, token_ids in zip(picked, encoded["input_ids"]):
                    ids[i] = list(token_ids)
        for (where, row), (text, _), token_ids in zip(rows, rendered, ids):
            if not token_ids:
                raise DatasetError(f"{where}: the prompt has no tokens")
            if self.seq_length is not None and len(token_ids) > self.seq_length:
                raise DatasetError(f"{where}: the prompt is {len(token_ids)} tokens, longer than "
                                   f"seq_length={self.seq_length}")
            self.locations.append(where)
            self.prompts.append(text)
            self.prompt_ids.append(token_ids)
            self.columns.append({k: v for k, v in row.items() if k != self.prompt_column})

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self.prompts)
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(n))]  # type: ignore[return-value]
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"sample {idx} out of range ({n} samples)")
        return {"prompt_ids": list(self.prompt_ids[idx]), "prompt": self.prompts[idx],
                "columns": dict(self.columns[idx]), "index": idx}

    def location(self, idx: int) -> str:
        """The file and line (or index) a prompt was read from."""
        return self.locations[idx]

    @property
    def lengths(self) -> list[int]:
        """Tokens of every prompt."""
        return [len(ids) for ids in self.prompt_ids]


def collate_prompts(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of prompts as lists, unpadded (the generator pads): ``prompt_ids``, ``prompts``, ``columns``
    (one list per column name, aligned with the prompts; a column a row lacks is None there), ``index``."""
    if not items:
        raise ValueError("collate_prompts: an empty batch")
    names: list[str] = []
    for item in items:
        names.extend(k for k in item["columns"] if k not in names)
    return {"prompt_ids": [list(item["prompt_ids"]) for item in items],
            "prompts": [item["prompt"] for item in items],
            "columns": {name: [item["columns"].get(name) for item in items] for name in names},
            "index": [item["index"] for item in items]}
