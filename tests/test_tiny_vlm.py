"""The offline tiny vision-language models: complete transformers directories that train."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nemo_like._transformers.embedded import resolve_pretrained_path
from nemo_like._transformers.tiny_vlm import TINY_VLM_ARCHS, TINY_VLM_IDS, tiny_vlm_dir

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Purple."}]},
]


def model_inputs(arch: str, directory: Path, image: Image.Image) -> dict[str, Any]:
    """Processor inputs for one image and one conversation (Qwen2-VL's processor without its video part where
    torchvision is missing)."""
    from nemo_like._transformers.processor import load_processor

    processor = load_processor(directory)
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    return dict(processor(text=[text], images=[[image]], return_tensors="pt"))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.new("RGB", (40, 30), (120, 30, 200))


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_directory_loads_and_trains(arch: str, image: Image.Image) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = tiny_vlm_dir(arch)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    assert model.config.get_text_config().vocab_size == model.get_input_embeddings().num_embeddings
    from nemo_like._transformers.processor import load_processor

    assert load_processor(directory) is not None
    if arch != "qwen2_vl" or HAS_TORCHVISION:
        assert AutoProcessor.from_pretrained(directory) is not None
    batch = model_inputs(arch, directory, image)
    image_id = model.config.image_token_id
    assert (batch["input_ids"] == image_id).sum() > 0
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_chat_template_marks_assistant_turns(arch: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir(arch))
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert "<|im_start|>assistant\nPurple.<|im_end|>\n" in text
    assert text.startswith("<|im_start|>user\n")
    prompt = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_builds_are_identical(arch: str, tmp_path: Path) -> None:
    shared = load_file(tiny_vlm_dir(arch) / "model.safetensors")
    fresh = load_file(tiny_vlm_dir(arch, root=tmp_path) / "model.safetensors")
    assert shared.keys() == fresh.keys()
    assert all(torch.equal(shared[k], fresh[k]) for k in shared)
    assert (tmp_path / arch / "tokenizer.json").read_bytes() == (tiny_vlm_dir(arch) / "tokenizer.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{arch}.tmp-")]


def test_ids_resolve_to_the_built_directories() -> None:
    for tiny_id, arch in TINY_VLM_IDS.items():
        assert resolve_pretrained_path(tiny_id) == str(tiny_vlm_dir(arch))
    assert resolve_pretrained_path("Nemo-Like/Tiny-LLaVA") == str(tiny_vlm_dir("llava"))
    assert set(TINY_VLM_IDS) == {"nemo-like/tiny-idefics3", "nemo-like/tiny-llava", "nemo-like/tiny-qwen2-vl"}


def test_unknown_arch_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="choose one of idefics3, llava, qwen2_vl"):
        tiny_vlm_dir("paligemma")
