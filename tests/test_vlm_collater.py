"""The VLM collater on the three tiny architectures: labels exactly on the assistant answers, pre-shifted."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from nemo_like.components.batch import IGNORE_INDEX, model_batch_keys, split_batch
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.vlm.collate_fns import VLMCollater, default_collate_fn, image_token_ids
from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("idefics3", "llava", "qwen2_vl")
END = "<|im_end|>"  # the tiny models' end-of-turn marker (ChatML)
_LOADED: dict[str, object] = {}


def processor_of(arch: str):
    """The tiny model's processor (Qwen2-VL's without its video part where torchvision is missing)."""
    if arch not in _LOADED:
        from nemo_like._transformers.processor import load_processor
        from nemo_like._transformers.tiny_vlm import tiny_vlm_dir

        _LOADED[arch] = load_processor(tiny_vlm_dir(arch))
    return _LOADED[arch]


@pytest.fixture(scope="module")
def shapes():
    return VLMConversationDataset(str(REPO / "data" / "vlm" / "shapes"), split="validation")


def _images(ds, n):
    found = []
    for i in range(len(ds)):
        found += [p["image"] for m in ds[i]["conversation"] for p in m["content"] if p["type"] == "image"]
        if len(found) >= n:
            return found[:n]
    raise AssertionError("not enough images")


def multi_turn(ds) -> dict:
    """System prompt, then images in two user turns (one, then two between text parts)."""
    a, b, c = _images(ds, 3)
    return {"where": "multi:1", "conversation": [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "Which shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        {"role": "user", "content": [{"type": "text", "text": "And these two:"}, {"type": "image", "image": b},
                                     {"type": "image", "image": c}, {"type": "text", "text": "how many in all?"}]},
        {"role": "assistant", "content": "5 shapes"},
    ]}


def single(ds, answer: str = "blue") -> dict:
    (image,) = _images(ds, 1)
    return {"where": "single:1", "conversation": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


def labelled_runs(tokenizer, labels: torch.Tensor) -> list[str]:
    """The decoded text of each contiguous run of labelled positions."""
    runs, current = [], []
    for value in labels.tolist() + [IGNORE_INDEX]:
        if value != IGNORE_INDEX:
            current.append(value)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def check_labels(processor, batch: dict, answers: list[list[str]]) -> None:
    """Token by token: labels are the next input token, only on answers + END, never on images or padding."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert labels.shape == ids.shape == mask.shape
    image_ids = image_token_ids(processor)
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) in image_ids
    for r, row_answers in enumerate(answers):
        assert labelled_runs(processor.tokenizer, labels[r]) == [a + END for a in row_answers]
        for t in range(ids.shape[1]):
            label = int(labels[r, t])
            if int(ids[r, t]) in image_ids or not mask[r, t]:
                assert label == IGNORE_INDEX, (r, t)
            if label != IGNORE_INDEX and t + 1 < ids.shape[1]:
                assert int(ids[r, t + 1]) == label and mask[r, t + 1] == 1, (r, t)
            assert label == IGNORE_INDEX or label not in image_ids
        assert int(mask[r].sum()) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_of_two_with_padding_and_multi_turn_images(arch, shapes):
    processor = processor_of(arch)
    batch = VLMCollater(processor)([multi_turn(shapes), single(shapes)])
    check_labels(processor, batch, [["a red circle", "5 shapes"], ["blue"]])
    assert int(batch["attention_mask"][1].sum()) < batch["attention_mask"].shape[1]  # the short row is padded
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    counts = (batch["input_ids"] == image_id).sum(dim=1)
    assert counts[0] == 3 * counts[1] > 0  # three images, one image: each a full run
    expected = {"idefics3": {"pixel_values", "pixel_attention_mask"}, "llava": {"pixel_values"},
                "qwen2_vl": {"pixel_values", "image_grid_thw", "mm_token_type_ids"}}[arch]
    assert set(batch) == {"input_ids", "attention_mask", "labels"} | expected


@pytest.mark.parametrize("arch", ARCHS)
def test_text_only_rows_mix_with_image_rows(arch, shapes):
    processor = processor_of(arch)
    text = {"where": "text:1", "conversation": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]}
    check_labels(processor, VLMCollater(processor)([single(shapes), text]), [["blue"], ["hello"]])
    alone = VLMCollater(processor)([text])
    check_labels(processor, alone, [["hello"]])
    assert "pixel_values" not in alone


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_rows_collate(arch, shapes):
    processor = processor_of(arch)
    items = [shapes[i] for i in range(6)]
    batch = default_collate_fn(items, processor)
    answers = [[m["content"][0]["text"] for m in it["conversation"] if m["role"] == "assistant"] for it in items]
    check_labels(processor, batch, answers)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_with_masked_cross_entropy(arch, shapes):
    from transformers import AutoModelForImageTextToText

    from nemo_like._transformers.tiny_vlm import tiny_vlm_dir

    processor = processor_of(arch)
    batch = VLMCollater(processor)([multi_turn(shapes), single(shapes)])
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir(arch))
    inputs, own = split_batch(batch, model_batch_keys(model), ["labels"])  # every key has a consumer
    logits = model(**inputs).logits
    assert logits.shape[:2] == own["labels"].shape
    n = int((own["labels"] != IGNORE_INDEX).sum())
    loss = MaskedCrossEntropy()(logits, own["labels"], num_label_tokens=n)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", ARCHS)
def test_max_length_never_cuts_an_image_run(arch, shapes, caplog):
    processor = processor_of(arch)
    long, short = multi_turn(shapes), single(shapes)
    full = VLMCollater(processor)([long, short])
    length = int(full["attention_mask"][0].sum())
    image_ids = torch.tensor(sorted(image_token_ids(processor)))
    last_image = int(torch.isin(full["input_ids"][0], image_ids).nonzero().max())
    just = VLMCollater(processor, max_length=last_image + 1)([long, short])  # the run ends the inputs
    assert torch.equal(just["input_ids"][0], full["input_ids"][0, : last_image + 1])
    with pytest.raises(DatasetError, match=r"^multi:1: .*would cut into its image tokens"):
        VLMCollater(processor, max_length=last_image)([long, short])
    with caplog.at_level(logging.WARNING, logger="nemo_like"):
        dropped = VLMCollater(processor, max_length=last_image, drop_overlong=True)([long, short])
    assert "multi:1" in caplog.text and dropped["input_ids"].shape[0] == 1
    check_labels(processor, dropped, [["blue"]])
    cut = VLMCollater(processor, max_length=length - 3)([long, short])  # the last answer loses its end
    assert cut["input_ids"].shape[1] == length - 3
    runs = labelled_runs(processor.tokenizer, cut["labels"][0])
    assert runs[0] == "a red circle" + END and len(runs) == 2 and ("5 shapes" + END).startswith(runs[1])


def test_answer_that_the_template_changes_is_an_error(shapes):
    processor = copy.copy(processor_of("llava"))
    processor.chat_template = processor.chat_template.replace("{{ part['text'] }}", "{{ part['text'] | upper }}")
    with pytest.raises(DatasetError, match=r"^single:1: message 1 \(assistant\): its text is not in .*cannot be "
                                           r"labelled"):
        VLMCollater(processor)([single(shapes)])


def test_template_that_rewrites_earlier_turns_is_an_error(shapes):
    processor = copy.copy(processor_of("llava"))
    processor.chat_template = "{{ messages | length }}" + processor.chat_template
    with pytest.raises(DatasetError, match=r"^single:1: the chat template does not render this conversation turn"):
        VLMCollater(processor)([single(shapes)])


def test_items_must_hold_decoded_images(shapes):
    item = single(shapes)
    item["conversation"][0]["content"][0]["image"] = "pic.png"
    with pytest.raises(DatasetError, match=r"^single:1: message 0: an image part must hold a PIL image"):
        VLMCollater(processor_of("llava"))([item])


def test_non_rgb_images_are_converted(shapes):
    item = single(shapes)
    item["conversation"][0]["content"][0]["image"] = Image.new("L", (64, 64), 128)
    batch = VLMCollater(processor_of("llava"))([item])
    check_labels(processor_of("llava"), batch, [["blue"]])
