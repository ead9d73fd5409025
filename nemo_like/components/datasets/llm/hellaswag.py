"""HellaSwag as single-turn supervised data: the context is the prompt, the labelled ending the target.

A row holds ``ctx`` (the situation), ``endings`` (four continuations) and ``label`` (the index
of the right one, an integer or a digit string as on the hub); ``activity_label``, ``ctx_a``
and ``ctx_b`` may be present and are not used (``ctx`` already joins ``ctx_a`` and ``ctx_b``).
The context and the ending are tokenized apart, each with the tokenizer's special tokens, the
context losing a trailing special token and the ending a leading one (a BOS in the middle of
a text would be wrong), and joined with no text between them. Only the ending carries loss,
followed by EOS so that a model learns where the continuation stops.

``pad_to_max_length`` (the default, as in the recipes) pads every item to the longest item
of the dataset rounded up to a multiple of 8, so all batches have one shape; with False the
collater pads each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import pad_token_id_of, shift_and_pad
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset

_PAD_MULTIPLE = 8


def hellaswag_context_and_ending(where: str, row: dict[str, Any]) -> tuple[str, str]:
    """``ctx`` and ``endings[label]`` of one row; a row of another shape names the column at fault."""
    missing = [key for key in ("ctx", "endings", "label") if key not in row]
    if missing:
        raise DatasetError(f"{where}: a HellaSwag row needs {missing}; the row has {sorted(row)}")
    ctx, endings, label = row["ctx"], row["endings"], row["label"]
    if not isinstance(ctx, str):
        raise DatasetError(f"{where}: column 'ctx' must be a string, got {type(ctx).__name__}")
    if not isinstance(endings, list) or not endings or not all(isinstance(e, str) for e in endings):
        raise DatasetError(f"{where}: column 'endings' must be a non-empty list of strings")
    try:
        index = int(label) if not isinstance(label, bool) else None
    except (TypeError, ValueError):
        index = None
    if index is None or not 0 <= index < len(endings):
        raise DatasetError(f"{where}: column 'label' must be an index into the {len(endings)} endings "
                           f"(0..{len(endings) - 1}), got {label!r}")
    return ctx, endings[index]


class HellaSwag(TokenizedDataset):
    """HellaSwag rows as context (no loss) + labelled ending and EOS (loss), pre-shifted.

    ``path_or_dataset`` is a hub id or a local JSON / JSONL / Parquet file, a list of them, or a
    folder of split files in which ``split`` picks the files; ``num_samples_limit`` keeps the
    first N rows of the split. ``max_length`` is the model's context (a longer row is an error
    naming it); ``num_proc`` / ``cache_dir`` as for every tokenized dataset.
    """

    def __init__(
        self,
        path_or_dataset: str | Sequence[str],
        tokenizer: Any,
        split: str = "train",
        num_samples_limit: int | None = None,
        pad_to_max_length: bool = True,
        max_length: int | None = None,
        num_proc: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        if tokenizer.eos_token_id is None:
            raise DatasetError("dataset: the tokenizer has no EOS token to end the ending with")
        if num_samples_limit is not None and (isinstance(num_samples_limit, bool)
                                              or not isinstance(num_samples_limit, int) or num_samples_limit < 1):
            raise DatasetError(f"dataset.num_samples_limit: expected a positive integer, got {num_samples_limit!r}")
        self.tokenizer = tokenizer
        self.row_limit = RowLimit(tokenizer, max_length, None, False, source=path_or_dataset)
        self.pad_token_id = pad_token_id_of(tokenizer)
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._load_table(path_or_dataset, split, num_samples_limit, cache_dir, num_proc)
        if pad_to_max_length:
            longest = int(self.table.lengths.max()) if len(self.table) else 0
            self.seq_length = -(-longest // _PAD_MULTIPLE) * _PAD_MULTIPLE
            self.pad_to_seq_length = True

    def _settings(self) -> dict[str, Any] | None:
        return {"format": "ctx+ending+eos"}

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        ctx, ending = hellaswag_context_and_ending(where, row)
        return Pieces([ctx, ending], [True, True])

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, list[int]] | None:
        ctx_ids, ending_ids = encoded
        if ctx_ids and ctx_ids[-1] in self._special:
            ctx_ids = ctx_ids[:-1]
        if ending_ids and ending_ids[0] in self._special:
            ending_ids = ending_ids[1:]
        eos = self.tokenizer.eos_token_id
        if not ending_ids or ending_ids[-1] != eos:
            ending_ids = ending_ids + [eos]
        if not ctx_ids:
            raise DatasetError(f"{where}: column 'ctx' is empty")
        self.row_limit.keep(where, len(ctx_ids) + len(ending_ids) - 1)
        return shift_and_pad(ctx_ids + ending_ids, [IGNORE_INDEX] * len(ctx_ids) + ending_ids, None,
                             self.pad_token_id)
