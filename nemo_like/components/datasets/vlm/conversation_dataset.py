"""Conversations with images (OpenAI / Oumi content lists, or LLaVA-style ShareGPT) as items for the VLM collater.

Why items are not tokens: the processor of the model expands each image into its own
number of placeholder tokens, so tokenizing belongs to the collater, which holds the
processor. An item is ``{"conversation": [...], "where": "file:line"}`` where every
message is ``{"role", "content": [parts]}``, a part is ``{"type": "text", "text": str}``
or ``{"type": "image", "image": PIL.Image (RGB)}`` — NeMo AutoModel's item shape, plus the
row's name for error messages. Rows are checked when the dataset is built (roles, an
assistant answer, well-formed image parts, image paths inside the root); images are
decoded only in ``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.vlm.images import MAX_IMAGE_PIXELS, ImagePolicy, check_source, load_image
from nemo_like.components.datasets.vlm.rows import RowTable

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
IMAGE_TAG = "<image>"  # LLaVA-style placeholder in ShareGPT text, filled from the row's "image"/"images"
# part type -> keys that may hold the image, in order of preference
_IMAGE_KEYS = {
    "image": ("image", "path", "url", "base64", "content"),
    "image_url": ("image_url", "url", "content"),
    "image_path": ("content", "path"),
    "image_binary": ("binary", "content"),
}


def _image_value(part: dict[str, Any], where: str) -> Any:
    for key in _IMAGE_KEYS[part["type"]]:
        value = part.get(key)
        if isinstance(value, dict) and key == "image_url":
            value = value.get("url")
        if value is not None:
            return value
    raise DatasetError(f"{where}: an {part['type']!r} part needs one of {list(_IMAGE_KEYS[part['type']])}; "
                       f"it has {sorted(part)}")


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as normalized parts (images still as their sources)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise DatasetError(f"{where}: 'content' must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        here = f"{where} part {j}"
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict) or "type" not in part:
            raise DatasetError(f"{here}: expected an object with a 'type', got {type(part).__name__}")
        kind = part["type"]
        if kind == "text":
            text = part.get("text", part.get("content"))
            if not isinstance(text, str):
                raise DatasetError(f"{here}: a text part needs a string 'text'")
            parts.append({"type": "text", "text": text})
        elif kind in _IMAGE_KEYS:
            parts.append({"type": "image", "image": _image_value(part, here)})
        else:
            raise DatasetError(f"{here}: unknown part type {kind!r}; use 'text' or one of {sorted(_IMAGE_KEYS)}")
    return parts


def _sharegpt(turns: list[Any], row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """LLaVA-style ``[{"from": "human", "value": "<image>\\nWhat is it?"}, ...]`` with the row's images."""
    images = row.get("images", row.get("image"))
    images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    messages = []
    used = 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or not isinstance(turn.get("value"), str):
            raise DatasetError(f"{where}: conversations[{i}] needs a 'from' and a string 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DatasetError(f"{where}: conversations[{i}]: unknown speaker {turn['from']!r}; "
                               f"use one of {sorted(SHAREGPT_ROLES)}")
        pieces = turn["value"].split(IMAGE_TAG)
        parts: list[dict[str, Any]] = []
        for k, piece in enumerate(pieces):
            if k > 0:
                if used >= len(images):
                    raise DatasetError(f"{where}: conversations[{i}] has more {IMAGE_TAG} tags than the row has "
                                       f"images ({len(images)})")
                parts.append({"type": "image", "image": images[used]})
                used += 1
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": parts})
    if used != len(images):
        raise DatasetError(f"{where}: the row has {len(images)} images but its text has {used} {IMAGE_TAG} tags")
    return messages


def normalize_messages(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The row's messages as ``{"role", "content": [parts]}``, checked; image parts hold their sources."""
    key = next((k for k in ("messages", "conversation", "conversations") if k in row), None)
    if key is None:
        raise DatasetError(f"{where}: no 'messages' (or 'conversation'/'conversations'); the row has {sorted(row)}")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise DatasetError(f"{where}: {key!r} must be a non-empty list of messages")
    if all(isinstance(t, dict) and "from" in t for t in turns):
        messages = _sharegpt(turns, row, where)
    else:
        messages = []
        for i, message in enumerate(turns):
            if not isinstance(message, dict) or "role" not in message:
                raise DatasetError(f"{where}: message {i} must be an object with a 'role' and a 'content'")
            if message["role"] not in ROLES:
                raise DatasetError(f"{where}: message {i}: unknown role {message['role']!r}; use one of {list(ROLES)}")
            if message.get("content") is None:
                raise DatasetError(f"{where}: message {i} ({message['role']}): 'content' is missing")
            messages.append({"role": message["role"],
                             "content": _parts(message["content"], f"{where}: message {i} ({message['role']})")})
    check_messages(messages, where)
    return messages


def check_messages(messages: list[dict[str, Any]], where: str) -> None:
    """Images only in user turns, no empty turn, and at least one assistant answer to learn from."""
    for i, message in enumerate(messages):
        if not message["content"]:
            raise DatasetError(f"{where}: message {i} ({message['role']}) is empty")
        if message["role"] != "user" and any(p["type"] == "image" for p in message["content"]):
            raise DatasetError(f"{where}: message {i} ({message['role']}): images are only supported in user messages")
    if not any(m["role"] == "assistant" and any(p["text"].strip() for p in m["content"]) for m in messages):
        raise DatasetError(f"{where}: the conversation has no assistant message with text to learn from")


def image_parts(messages: list[dict[str, Any]], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every image part with the name of its place (``file:line: message 1 (user) image 0``)."""
    found = []
    for i, message in enumerate(messages):
        images = [p for p in message["content"] if p["type"] == "image"]
        found += [(f"{where}: message {i} ({message['role']}) image {k}", p) for k, p in enumerate(images)]
    return found


class VLMConversationDataset(Dataset):
    """Image-and-text conversations from local JSON/JSONL (or Parquet, or a hub id), checked at construction.

    Image parts: ``{"type": "image", "path" | "image" | "url" | "base64": ...}``,
    ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` or Oumi's
    ``image_path`` / ``image_binary``; the value is a local path, raw base64 or a ``data:``
    URL (http URLs are refused: download first). Relative paths start at the data file's
    folder, or ``image_root``; see ``images`` for what is refused and why.
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        split: str | None = None,
        image_root: str | None = None,
        allow_outside_root: bool = False,
        limit_dataset_samples: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.rows = RowTable(path_or_dataset_id, split, limit_dataset_samples, image_root)
        self.allow_outside_root = bool(allow_outside_root)
        self.max_image_pixels = int(max_image_pixels)
        for index in range(len(self.rows)):
            where = self.rows.where(index)
            policy = self._policy(index)
            for place, part in image_parts(self.messages(index), where):
                check_source(part["image"], place, policy)

    def _policy(self, index: int) -> ImagePolicy:
        return ImagePolicy(self.rows.root(index), self.allow_outside_root, self.max_image_pixels)

    def messages(self, index: int) -> list[dict[str, Any]]:
        """Row ``index`` as normalized messages; subclasses map other row shapes."""
        return normalize_messages(self.rows.row(index), self.rows.where(index))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        where = self.rows.where(index)
        messages = self.messages(index)
        policy = self._policy(index)
        for place, part in image_parts(messages, where):
            part["image"] = load_image(part["image"], place, policy)
        return {"conversation": messages, "where": where}
