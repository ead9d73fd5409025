"""Preference pairs (a prompt, a chosen and a rejected completion) tokenized once, for DPO and its kin.

Rows come in the plain form (three strings) or the conversational form (message lists: the
prompt's turns, and each completion's assistant turn(s), rendered with the chat template), as
TRL and Oumi read them; a row without a prompt column takes the leading turns its chosen and
rejected conversations share as the prompt. ``use_hf_chat_template`` renders plain rows as one
user turn and an assistant answer, so a chat model is tuned in the form it is prompted in. The tokens are TRL's: the prompt alone and prompt +
completion are tokenized (plain text with the tokenizer's special tokens and an EOS ended
completion; conversations through the template), and the completion starts where the two
token lists part, so a template that renders the prompt differently alone still yields the
tokens the model is trained on.

Items: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (lists). With
``seq_length``, a pair whose prompt plus longer completion exceeds it is an error naming the
row, or with ``truncation`` has its completions cut (the prompt is kept; counted in one log
line); a prompt that alone reaches ``seq_length`` is an error either way. Tokenized in batches
into the token cache like every map-style dataset here (see ``tokenized_dataset``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on, pad_token_id_of
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset

logger = logging.getLogger("nemo_like")

_COLUMNS = ("prompt", "chosen", "rejected")


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PreferenceDataset(TokenizedDataset):
    """Prompt / chosen / rejected token lists per row; see the module docstring."""

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        tokenizer: Any,
        column_mapping: dict[str, str] | None = None,
        split: str | None = None,
        seq_length: int | None = None,
        truncation: str | bool = "do_not_truncate",
        limit_dataset_samples: int | None = None,
        chat_template: str | None = None,
        use_hf_chat_template: bool = False,
        max_length: int | None = None,
        num_proc: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        mapping = {name: name for name in _COLUMNS}
        unknown = set(column_mapping or {}) - set(_COLUMNS)
        if unknown:
            raise DatasetError(f"dataset.column_mapping: unknown key(s) {sorted(unknown)}; use {list(_COLUMNS)}")
        mapping.update(column_mapping or {})
        self.tokenizer = tokenizer
        self.column_mapping = mapping
        self.seq_length = seq_length
        self.truncate = is_truncation_on(truncation)
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.use_hf_chat_template = bool(use_hf_chat_template)
        self.row_limit = RowLimit(tokenizer, max_length, seq_length, self.truncate, source=path_or_dataset_id)
        self.pad_token_id = pad_token_id_of(tokenizer)
        if tokenizer.eos_token is None:
            raise DatasetError("dataset: the tokenizer has no EOS token to end plain completions with")
        self._load_table(path_or_dataset_id, split, limit_dataset_samples, cache_dir, num_proc)

    def _settings(self) -> dict[str, Any] | None:
        return {"column_mapping": self.column_mapping, "chat_template": self.chat_template,
                "use_hf_chat_template": self.use_hf_chat_template}

    # ------------------------------------------------------------------ rows
    def _parts(self, where: str, row: dict[str, Any]) -> tuple[Any, Any, Any]:
        """The row's prompt, chosen and rejected, with an implicit prompt taken from the shared leading turns."""
        names = self.column_mapping
        for key in ("chosen", "rejected"):
            if names[key] not in row:
                raise DatasetError(f"{where}: column '{names[key]}' (column_mapping.{key}) is missing; "
                                   f"the row has {sorted(row)}")
        chosen, rejected = row[names["chosen"]], row[names["rejected"]]
        prompt = row.get(names["prompt"])
        if prompt is None:
            if not (isinstance(chosen, list) and isinstance(rejected, list)):
                raise DatasetError(f"{where}: column '{names['prompt']}' (column_mapping.prompt) is missing; "
                                   "only conversational rows may leave the prompt implicit")
            shared = common_prefix_length([repr(m) for m in chosen], [repr(m) for m in rejected])
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        kinds = {type(v) for v in (prompt, chosen, rejected)}
        if kinds not in ({str}, {list}):
            raise DatasetError(f"{where}: prompt, chosen and rejected must be all strings or all message lists, got "
                               + ", ".join(type(v).__name__ for v in (prompt, chosen, rejected)))
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value or (isinstance(value, str) and not value.strip()):
                raise DatasetError(f"{where}: empty {name} completion (column '{names[name]}')")
        return prompt, chosen, rejected

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        prompt, chosen, rejected = self._parts(where, row)
        if isinstance(prompt, str) and self.use_hf_chat_template:  # a user turn and two assistant turns
            prompt, chosen, rejected = ([{"role": "user", "content": prompt}],
                                        [{"role": "assistant", "content": chosen}],
                                        [{"role": "assistant", "content": rejected}])
        if isinstance(prompt, str):
            eos = self.tokenizer.eos_token
            chosen, rejected = (c if c.endswith(eos) else c + eos for c in (chosen, rejected))
            return Pieces([prompt, prompt + chosen, prompt + rejected], [True, True, True])
        if not self.chat_template:
            raise DatasetError(f"{where}: conversational rows need a chat template (the tokenizer's or "
                               "dataset.chat_template)")
        renderer = self._renderer(self.chat_template)
        try:
            first = renderer.render([prompt], add_generation_prompt=True)
            both = renderer.render([prompt + chosen, prompt + rejected])
        except Exception as err:  # jinja's own errors, a template's raise_exception
            raise DatasetError(f"{where}: the chat template rejects this conversation ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
        return Pieces(first + both, [False, False, False])

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, Any] | None:
        prompt_ids, with_chosen, with_rejected = encoded
        n = min(common_prefix_length(prompt_ids, with_chosen), common_prefix_length(prompt_ids, with_rejected))
        prompt_ids, chosen, rejected = prompt_ids[:n], with_chosen[n:], with_rejected[n:]
        if not chosen or not rejected:
            raise DatasetError(f"{where}: a completion has no tokens of its own after the prompt")
        limit = self.row_limit.limit
        if limit is not None:
            if len(prompt_ids) >= limit:
                raise DatasetError(f"{where}: the prompt alone is {len(prompt_ids)} tokens, not shorter than "
                                   f"{self.row_limit.describe()}; truncation cuts only the completions")
            keep = self.row_limit.keep(where, len(prompt_ids) + max(len(chosen), len(rejected))) - len(prompt_ids)
            chosen, rejected = chosen[:keep], rejected[:keep]
        ids = prompt_ids + chosen + rejected
        return {"input_ids": ids, "labels": ids, "parts": [len(prompt_ids), len(chosen), len(rejected)]}

    # ------------------------------------------------------------------ reading
    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range ({len(self)} samples)")
        ids = self.table.input_ids[idx].tolist()
        p, c, _ = (int(x) for x in self.table.parts[idx])
        return {"prompt_ids": ids[:p], "chosen_ids": ids[p : p + c], "rejected_ids": ids[p + c :]}

    def document_table(self) -> None:
        """Pairs are not documents to pack one after another (pair packing has its own collater)."""
        return None
