"""Image question-answer rows from any columns -> one-turn VLM conversations.

Why: many image datasets are flat tables (an image column, a question, an answer).
``column_mapping`` names the columns, as ``ColumnMappedTextInstructionDataset`` does for
text; each row becomes an optional system message, a user turn with the image(s) then the
question, and an assistant turn with the answer — the item form of ``VLMConversationDataset``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset, check_messages
from nemo_like.components.datasets.vlm.images import MAX_IMAGE_PIXELS

_FIELDS = ("image", "question", "answer")


class ColumnMappedVLMDataset(VLMConversationDataset):
    """``column_mapping = {"image": col, "question": col, "answer": col}``; an image cell may hold a list of images.
    ``question``: one question for every row, where no column holds it (``Describe this image.``)."""

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        column_mapping: Mapping[str, str],
        split: str | None = None,
        system_prompt: str | None = None,
        question: str | None = None,
        image_root: str | None = None,
        allow_outside_root: bool = False,
        limit_dataset_samples: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        mapping = dict(column_mapping or {})
        unknown = sorted(set(mapping) - set(_FIELDS))
        missing = [f for f in ("question", "answer") if f not in mapping and not (f == "question" and question)]
        if unknown or missing:
            raise DatasetError(f"dataset.column_mapping: {'unknown ' + str(unknown) if unknown else ''}"
                               f"{'; ' if unknown and missing else ''}{'missing ' + str(missing) if missing else ''}; "
                               f"map {list(_FIELDS)} to column names ('image' may be left out for text-only rows)")
        self.column_mapping = mapping
        self.system_prompt = system_prompt
        self.question = question  # the same question for every row, when no column holds one
        super().__init__(path_or_dataset_id, split=split, image_root=image_root,
                         allow_outside_root=allow_outside_root, limit_dataset_samples=limit_dataset_samples,
                         max_image_pixels=max_image_pixels)

    def _answer(self, cell: Any, where: str) -> Any:
        """The answer text of a row's answer cell (a subclass may derive it, e.g. from a JSON parse)."""
        return cell

    def messages(self, index: int) -> list[dict[str, Any]]:
        row, where = self.rows.row(index), self.rows.where(index)
        cells = {}
        for field, column in self.column_mapping.items():
            if column not in row:
                raise DatasetError(f"{where}: no column {column!r} (column_mapping.{field}); the row has {sorted(row)}")
            cells[field] = row[column]
        if "question" not in cells:
            cells["question"] = self.question
        if "answer" in cells:
            cells["answer"] = self._answer(cells["answer"], where)
        for field in ("question", "answer"):
            if not isinstance(cells[field], str):
                raise DatasetError(f"{where}: column {self.column_mapping.get(field)!r} ({field}) must be a string, "
                                   f"got {type(cells[field]).__name__}")
        images = cells.get("image")
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        user = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": cells["question"]}]
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": [{"type": "text", "text": cells["answer"]}]}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        check_messages(messages, where)
        return messages
