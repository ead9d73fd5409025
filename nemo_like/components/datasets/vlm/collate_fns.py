"""VLM conversations -> one batch of model inputs with pre-shifted labels on the assistant answers only.

How the answers are found: the processor's chat template renders each conversation, and
again each prefix up to an assistant message (with the generation prompt) and through it.
What an assistant message adds after its prompt (its text and the end-of-turn marker such
as ``<|im_end|>``, without the whitespace after it) is a character span of the rendered
text; the template must render turn by turn (each prefix extends the one before) or the
row is refused. The rendered text is tokenized with offsets to label the tokens of those
spans. The processor then tokenizes the same text with the images, expanding each image
placeholder into its run of image tokens; the labelled tokens are aligned into that
sequence (they lie outside the runs, which are all the processor inserts). Every span must
be found and land on tokens that are not image tokens, or the row is a one-line error.

Like the text datasets, the batch is pre-shifted: ``labels`` are the next tokens, and every
per-token tensor (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ...) loses its
last position; image tensors (``pixel_values``, ``image_grid_thw``, ...) pass unchanged.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.json_rows import DatasetError

logger = logging.getLogger("nemo_like")

# Processor attributes that name image-related tokens (placeholders, borders, tile markers).
_IMAGE_TOKEN_ATTRS = ("image_token", "fake_image_token", "global_image_token", "boi_token", "eoi_token",
                      "image_start_token", "image_end_token", "vision_start_token", "vision_end_token",
                      "video_token", "image_break_token")
_IMAGE_TOKEN_TEXT = re.compile(r"image|vision|img|video|<row_\d+_col_\d+>", re.IGNORECASE)


def image_token_ids(processor: Any) -> set[int]:
    """Ids of every image-related token of ``processor``: these never carry a label, and a cut never splits them."""
    tokenizer = processor.tokenizer
    ids = {getattr(processor, name, None) for name in ("image_token_id", "fake_image_token_id",
                                                       "global_image_token_id", "video_token_id")}
    ids |= {tokenizer.convert_tokens_to_ids(getattr(processor, name)) for name in _IMAGE_TOKEN_ATTRS
            if isinstance(getattr(processor, name, None), str)}
    ids |= {i for text, i in tokenizer.get_added_vocab().items() if _IMAGE_TOKEN_TEXT.search(text)}
    return {i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id}


def _as_parts(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


class VLMCollater:
    """Callable on a list of ``{"conversation": [...]}`` items (``"where"`` names the row in errors).

    ``max_length`` bounds the model's input length (tokens after the shift). A longer row is
    cut at the end when the cut falls after its last image token and leaves an answer token
    to learn from; otherwise it is a ``DatasetError``, or, with ``drop_overlong``, dropped from
    the batch with a warning (a batch that loses every row is still an error).
    """

    def __init__(self, processor: Any, max_length: int | None = None, drop_overlong: bool = False) -> None:
        if max_length is not None and (isinstance(max_length, bool) or int(max_length) < 2):
            raise ValueError(f"max_length: expected an integer of at least 2, got {max_length!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = int(max_length) if max_length is not None else None
        self.drop_overlong = bool(drop_overlong)
        self.image_ids = image_token_ids(processor)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("VLMCollater: the processor's tokenizer must be a fast tokenizer (it maps answer "
                             "characters to tokens by offsets)")

    # ------------------------------------------------------------------ rendering
    def _render(self, messages: list[dict[str, Any]], where: str, generation_prompt: bool = False) -> str:
        try:
            return self.processor.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as err:  # jinja raises its own errors; templates call raise_exception
            raise DatasetError(f"{where}: the chat template rejects this conversation "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None

    def spans(self, messages: list[dict[str, Any]], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character span of each assistant answer (its text and end-of-turn marker)."""
        full = self._render(messages, where)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], where, generation_prompt=True)
            through = self._render(messages[: i + 1], where)
            if not (through.startswith(prompt) and full.startswith(through)):
                raise DatasetError(f"{where}: the chat template does not render this conversation turn by turn "
                                   f"(message {i} changes the text before it), so its answer cannot be located")
            added = through[len(prompt):]
            answer = "".join(p["text"] for p in message["content"] if p["type"] == "text").strip()
            end = len(added.rstrip())
            if not answer or answer not in added[:end]:
                raise DatasetError(f"{where}: message {i} (assistant): its text is not in what the chat template "
                                   f"renders for it ({added[:60]!r}), so its tokens cannot be labelled")
            spans.append((len(prompt), len(prompt) + end))
        if not spans:
            raise DatasetError(f"{where}: the conversation has no assistant message to learn from")
        return full, spans

    # ------------------------------------------------------------------ labels
    def _text_labels(self, text: str, spans: list[tuple[int, int]], where: str) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` (no images expanded) and their labels: a token in an answer span is its own label."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        for k, (start, end) in enumerate(spans):
            hit = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
            if not hit:
                raise DatasetError(f"{where}: assistant answer {k} covers no token")
            for t in hit:
                labels[t] = ids[t]
        return ids, labels

    def _align(self, text_ids: list[int], text_labels: list[int], ids: list[int], where: str) -> list[int]:
        """``text_labels`` carried onto ``ids``, the processor's sequence with image runs expanded."""
        labels = [IGNORE_INDEX] * len(ids)
        matcher = difflib.SequenceMatcher(None, text_ids, ids, autojunk=False)
        for a, b, size in matcher.get_matching_blocks():
            labels[b: b + size] = text_labels[a: a + size]
        wanted = sum(label != IGNORE_INDEX for label in text_labels)
        got = [label for label in labels if label != IGNORE_INDEX]
        if len(got) != wanted:
            raise DatasetError(f"{where}: {wanted - len(got)} answer tokens could not be found in the processor's "
                               "tokens; the processor changes the text around its images")
        if any(label in self.image_ids for label in got):
            raise DatasetError(f"{where}: an assistant answer contains an image token (e.g. literal '<image>' "
                               "text); answers are text only")
        return labels

    # ------------------------------------------------------------------ the batch
    def _encode(self, texts: list[str], images: list[list[Image.Image]]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt", "add_special_tokens": False,
                                  "padding_side": "right"}
        if any(images):
            kwargs["images"] = images
        return dict(self.processor(text=texts, **kwargs))

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("VLMCollater: empty batch")
        rows = []
        for n, example in enumerate(examples):
            where = str(example.get("where", f"batch item {n}"))
            messages = self._messages(example, where)
            text, spans = self.spans(messages, where)
            images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
            rows.append((where, text, spans, images))
        while True:
            batch, keep = self._batch(rows)
            if keep == list(range(len(rows))):
                return batch
            rows = [rows[i] for i in keep]

    def _messages(self, example: dict[str, Any], where: str) -> list[dict[str, Any]]:
        conversation = example.get("conversation")
        if not isinstance(conversation, list) or not conversation:
            raise DatasetError(f"{where}: an item needs a non-empty 'conversation' list; it has {sorted(example)}")
        messages = []
        for i, message in enumerate(conversation):
            parts = _as_parts(message.get("content", []))
            for part in parts:
                if part.get("type") == "image" and not isinstance(part.get("image"), Image.Image):
                    raise DatasetError(f"{where}: message {i}: an image part must hold a PIL image under 'image' "
                                       "(decode images in the dataset)")
            messages.append({**message, "content": [
                {**p, "image": p["image"].convert("RGB")} if p.get("type") == "image" and p["image"].mode != "RGB"
                else p for p in parts]})
        return messages

    def _batch(self, rows: list[tuple[str, str, list[tuple[int, int]], list[Image.Image]]]
               ) -> tuple[dict[str, Any], list[int]]:
        """The batch of ``rows``, or (partial result, the rows to keep) when overlong rows must be dropped."""
        batch = self._encode([r[1] for r in rows], [r[3] for r in rows])
        input_ids: torch.Tensor = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(input_ids))
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        limit = self.max_length + 1 if self.max_length is not None else None  # tokens before the shift
        if limit is not None and bool((mask.cummin(dim=1).values != mask).any()):
            raise ValueError("VLMCollater: the processor padded on the left; max_length needs right padding")
        keep = []
        for r, (where, text, spans, _) in enumerate(rows):
            real = mask[r].nonzero().flatten()
            ids = input_ids[r, real].tolist()
            text_ids, text_labels = self._text_labels(text, spans, where)
            row_labels = self._align(text_ids, text_labels, ids, where)
            if limit is not None and len(ids) > limit and not self._fits(where, ids, row_labels, limit):
                continue
            labels[r, real] = torch.tensor(row_labels, dtype=labels.dtype)
            keep.append(r)
        if not keep:
            raise DatasetError(f"every row of the batch ({', '.join(r[0] for r in rows)}) is longer than "
                               f"max_length {self.max_length}")
        if len(keep) < len(rows):
            return batch, keep
        shape = input_ids.shape
        length = min(shape[1], limit) if limit is not None else shape[1]
        for key, value in list(batch.items()):  # per-token tensors: cut to the limit, then shift
            if isinstance(value, torch.Tensor) and value.shape == shape:
                batch[key] = value[:, : length - 1]
        batch["labels"] = labels[:, 1:length]
        return batch, keep

    def _fits(self, where: str, ids: list[int], labels: list[int], limit: int) -> bool:
        """Whether an overlong row can be cut to ``limit`` tokens; False when it is to be dropped."""
        cut_images = any(i in self.image_ids for i in ids[limit - 1:])  # the last kept token is only a label
        learns = any(label != IGNORE_INDEX for label in labels[1:limit])
        if not cut_images and learns:
            return True
        why = "would cut into its image tokens" if cut_images else "leaves no answer token to learn from"
        message = (f"{where}: {len(ids) - 1} tokens; cutting it to max_length {self.max_length} {why}; "
                   "raise max_length or shorten the conversation")
        if not self.drop_overlong:
            raise DatasetError(message + " (or set drop_overlong to drop such rows)")
        logger.warning("dropped from the batch: %s", message)
        return False


def default_collate_fn(examples: Sequence[dict[str, Any]], processor: Any, max_length: int | None = None,
                       drop_overlong: bool = False) -> dict[str, Any]:
    """NeMo AutoModel's name for the VLM collater: ``VLMCollater(processor, ...)(examples)``."""
    return VLMCollater(processor, max_length=max_length, drop_overlong=drop_overlong)(examples)


# NeMo AutoModel's collater for Qwen2.5-VL: the same work here (the processor does the model-specific part).
qwen2_5_collate_fn = default_collate_fn
