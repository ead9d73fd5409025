"""VLM datasets: the shipped shapes data, lazy images, image sources and their refusals, bad rows named file:line."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.vlm import conversation_dataset
from nemo_like.components.datasets.vlm.column_mapped_dataset import ColumnMappedVLMDataset
from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "data" / "vlm" / "shapes"
ANSWERS = {"red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "1", "2", "3", "4"}


def _png(size: tuple[int, int] = (8, 8), colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _row(*parts: dict, answer: str = "red") -> dict:
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "What colour?"}]},
                         {"role": "assistant", "content": answer}]}


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = _row({"type": "image", "image": base64.b64encode(_png()).decode()})


# ---------------------------------------------------------------------- shipped data
def test_shapes_splits_load_with_images_and_exact_answers():
    sizes = {"train": 600, "validation": 60, "test": 60}
    for split, size in sizes.items():
        ds = VLMConversationDataset(str(SHAPES), split=split)
        assert len(ds) == size
    item = ds[0]
    assert item["where"].endswith("test.jsonl:1")
    images = [p["image"] for m in item["conversation"] for p in m["content"] if p["type"] == "image"]
    assert images and all(im.mode == "RGB" and im.size == (64, 64) for im in images)
    for index in range(len(ds)):
        conversation = ds.messages(index)
        assert [m["role"] for m in conversation][::2] == ["user"] * (len(conversation) // 2)
        assert {m["content"][0]["text"] for m in conversation if m["role"] == "assistant"} <= ANSWERS


def test_split_slice_and_limit():
    assert len(VLMConversationDataset(str(SHAPES), split="train[:10]")) == 10
    assert len(VLMConversationDataset(str(SHAPES / "train.jsonl"), limit_dataset_samples=5)) == 5


def test_images_are_decoded_lazily(monkeypatch):
    calls = []
    real = conversation_dataset.load_image
    monkeypatch.setattr(conversation_dataset, "load_image", lambda *a: calls.append(a) or real(*a))
    ds = VLMConversationDataset(str(SHAPES), split="validation")
    assert calls == []  # construction checks rows, decodes nothing
    item = ds[3]
    assert len(calls) == sum(p["type"] == "image" for m in item["conversation"] for p in m["content"])


def test_path_referenced_images_load_relative_to_the_data_file():
    ds = VLMConversationDataset(str(REPO / "data" / "vlm" / "shapes_files" / "train.jsonl"))
    assert len(ds) == 4
    image = ds[1]["conversation"][0]["content"][0]["image"]
    on_disk = Image.open(REPO / "data" / "vlm" / "shapes_files" / "images" / "shape_1.png").convert("RGB")
    assert image.tobytes() == on_disk.tobytes()


# ---------------------------------------------------------------------- image sources
def test_other_image_forms(tmp_path):
    b64 = base64.b64encode(_png()).decode()
    (tmp_path / "pic.png").write_bytes(_png(colour=(0, 0, 255)))
    rows = [
        _row({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}),
        _row({"type": "image_path", "content": "pic.png"}),
        {"conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}],
         "image": "pic.png"},
        {"conversation": [{"role": "user", "content": [{"type": "image", "base64": b64}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
    ]
    ds = VLMConversationDataset(_write(tmp_path / "d.jsonl", rows))
    colours = [ds[i]["conversation"][0]["content"][0]["image"].getpixel((0, 0)) for i in range(len(ds))]
    assert colours == [(255, 0, 0), (0, 0, 255), (0, 0, 255), (255, 0, 0)]
    assert ds[2]["conversation"][0]["content"][1] == {"type": "text", "text": "What colour?"}


def test_image_root_and_allow_outside_root(tmp_path):
    (tmp_path / "outside.png").write_bytes(_png())
    data = _write(tmp_path / "data" / "d.jsonl", [_row({"type": "image", "path": "../outside.png"})])
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: message 0 \(user\) image 0: .*outside the image root"):
        VLMConversationDataset(data)
    assert VLMConversationDataset(data, allow_outside_root=True)[0]["conversation"][0]["content"][0]["image"]
    assert VLMConversationDataset(data, image_root=str(tmp_path / "x"), allow_outside_root=True)[0]
    rooted = _write(tmp_path / "data" / "e.jsonl", [_row({"type": "image", "path": "outside.png"})])
    assert VLMConversationDataset(rooted, image_root=str(tmp_path))[0]["conversation"][0]["content"][0]["image"]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_paths_escaping_the_root_are_refused(tmp_path, kind):
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png())
    folder = tmp_path / "data"
    folder.mkdir()
    path = {"dotdot": "../secret.png", "absolute": str(secret), "symlink": "link.png"}[kind]
    if kind == "symlink":
        os.symlink(secret, folder / "link.png")
    data = _write(folder / "d.jsonl", [GOOD, _row({"type": "image", "path": path})])
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: message 0 \(user\) image 0: .*outside the image root"):
        VLMConversationDataset(data)


@pytest.mark.parametrize("part, where, message", [
    ({"type": "image", "path": "missing.png"}, "init", r"image file not found: 'missing\.png'"),
    ({"type": "image", "image": "https://example.com/cat.png"}, "init", r"not fetched .* download the image first"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}, "init",
     r"payload is not base64"),
    ({"type": "image", "image": "data:image/png;base64,iVBORw0KGgo="}, "item", r"cannot decode the image"),
    ({"type": "image", "image": "iVBORw0KGgo" + "A" * 70 + "="}, "item", r"not valid base64"),
    ({"type": "image"}, "init", r"an 'image' part needs one of"),
    ({"type": "video", "video": "x.mp4"}, "init", r"unknown part type 'video'"),
])
def test_bad_images_are_one_line_errors_naming_the_row(tmp_path, part, where, message):
    data = _write(tmp_path / "d.jsonl", [GOOD, _row(part)])
    if where == "init":
        with pytest.raises(DatasetError, match=r"d\.jsonl:2: message 0 \(user\)" + ".*" + message) as err:
            VLMConversationDataset(data)
    else:
        ds = VLMConversationDataset(data)
        ds[0]
        with pytest.raises(DatasetError, match=r"d\.jsonl:2: message 0 \(user\) image 0: .*" + message) as err:
            ds[1]
    assert "\n" not in str(err.value)


def test_decompression_bomb_is_refused(tmp_path):
    big = base64.b64encode(_png(size=(200, 200))).decode()
    ds = VLMConversationDataset(_write(tmp_path / "d.jsonl", [_row({"type": "image", "image": big})]),
                                max_image_pixels=10_000)
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: .*200x200 = 40000 pixels, over the limit of 10000"):
        ds[0]


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message with text"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     "no assistant message with text"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
    ({"text": "hi"}, "no 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": [{"type": "image", "path": "x.png"}]}]},
     r"message 1 \(assistant\): images are only supported in user messages"),
    ({"conversations": [{"from": "human", "value": "<image><image> hi"}, {"from": "gpt", "value": "a"}],
      "image": "x.png"}, "more <image> tags than the row has images"),
])
def test_bad_rows_are_named(tmp_path, row, message):
    data = _write(tmp_path / "d.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: .*" + message):
        VLMConversationDataset(data)


# ---------------------------------------------------------------------- column-mapped
def test_column_mapped_rows_become_one_turn_conversations(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    rows = [{"img": "a.png", "q": "What colour is it?", "a": "red"},
            {"img": base64.b64encode(_png(colour=(0, 255, 0))).decode(), "q": "And this?", "a": "green"}]
    ds = ColumnMappedVLMDataset(_write(tmp_path / "qa.jsonl", rows),
                                column_mapping={"image": "img", "question": "q", "answer": "a"},
                                system_prompt="Answer in one word.")
    item = ds[1]
    roles = [m["role"] for m in item["conversation"]]
    assert roles == ["system", "user", "assistant"]
    user = item["conversation"][1]["content"]
    assert user[0]["type"] == "image" and user[0]["image"].getpixel((0, 0)) == (0, 255, 0)
    assert user[1] == {"type": "text", "text": "And this?"}
    assert item["conversation"][2]["content"] == [{"type": "text", "text": "green"}]
    assert item["where"].endswith("qa.jsonl:2")


def test_column_mapped_errors(tmp_path):
    data = _write(tmp_path / "qa.jsonl", [{"img": "a.png", "q": "x", "a": "y"}, {"img": "a.png", "q": "x"}])
    (tmp_path / "a.png").write_bytes(_png())
    with pytest.raises(DatasetError, match="missing.*'answer'"):
        ColumnMappedVLMDataset(data, column_mapping={"image": "img", "question": "q"})
    with pytest.raises(DatasetError, match=r"qa\.jsonl:2: no column 'a' \(column_mapping\.answer\)"):
        ColumnMappedVLMDataset(data, column_mapping={"image": "img", "question": "q", "answer": "a"})


def test_column_mapped_parquet_with_an_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [Image.open(io.BytesIO(_png(colour=(0, 0, 255))))] * 3,
                                        "question": ["Colour?"] * 3, "answer": ["blue"] * 3}, features=features)
    table.to_parquet(str(tmp_path / "train.parquet"))
    ds = ColumnMappedVLMDataset(str(tmp_path / "train.parquet"), split="train[:2]",
                                column_mapping={"image": "image", "question": "question", "answer": "answer"})
    assert len(ds) == 2
    assert ds[1]["conversation"][0]["content"][0]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert ds[1]["where"].endswith("train.parquet[1]")
