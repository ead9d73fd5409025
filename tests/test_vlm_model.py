"""The VLM loader, part lookup, freezing and language-model-only LoRA on the tiny offline VLMs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import nemo_like
from nemo_like._transformers.auto_vlm import NeMoAutoModelForImageTextToText
from nemo_like._transformers.tiny_vlm import TINY_VLM_ARCHS, TINY_VLM_IDS, tiny_vlm_dir
from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules, lora_modules
from nemo_like.components.models.vlm_parts import apply_freeze_config, language_model_lora_excludes, vlm_parts

ID_OF = {arch: tiny_id for tiny_id, arch in TINY_VLM_IDS.items()}
EXPECTED_PARTS = {
    "idefics3": {"vision_tower": ["model.vision_model"], "projector": ["model.connector"],
                 "language_model": ["model.text_model"], "embeddings": ["model.text_model.embed_tokens"],
                 "lm_head": ["lm_head"]},
    "llava": {"vision_tower": ["model.vision_tower"], "projector": ["model.multi_modal_projector"],
              "language_model": ["model.language_model"], "embeddings": ["model.language_model.embed_tokens"],
              "lm_head": ["lm_head"]},
    "qwen2_vl": {"vision_tower": ["model.visual"], "projector": ["model.visual.merger"],
                 "language_model": ["model.language_model"], "embeddings": ["model.language_model.embed_tokens"],
                 "lm_head": ["lm_head"]},
}


def load(arch: str) -> nn.Module:
    return NeMoAutoModelForImageTextToText.from_pretrained(ID_OF[arch], dtype="float32")


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def trainable_by_part(model: nn.Module) -> dict[str, set[bool]]:
    """For each part, the set of requires_grad values its parameters have (projector carved out of the tower)."""
    parts = vlm_parts(model)
    seen: dict[str, set[bool]] = {part: set() for part in parts}
    for name, param in model.named_parameters():
        for part, prefixes in parts.items():
            inside_projector = part == "vision_tower" and under(name, parts["projector"])
            if under(name, prefixes) and not inside_projector:
                seen[part].add(param.requires_grad)
    return seen


def one_image_batch(arch: str) -> dict[str, Any]:
    """Processor inputs for one image (Qwen2-VL's processor without its video part where torchvision is missing)."""
    from nemo_like._transformers.processor import load_processor

    processor = load_processor(tiny_vlm_dir(arch))
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Green."}]}]
    return dict(processor(text=[processor.apply_chat_template(chat, tokenize=False)], images=[[image]],
                          return_tensors="pt"))


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_parts_and_default_freeze(arch: str, caplog: pytest.LogCaptureFixture) -> None:
    model = load(arch)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert vlm_parts(model) == EXPECTED_PARTS[arch]
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters()
                 if under(n, EXPECTED_PARTS[arch]["vision_tower"]) and not under(n, EXPECTED_PARTS[arch]["projector"]))
    with caplog.at_level(logging.INFO, logger="nemo_like"):
        counts = apply_freeze_config(model)
    assert counts == {"trainable": total - vision, "total": total}
    assert "froze vision_tower" in caplog.text
    assert trainable_by_part(model) == {"vision_tower": {False}, "projector": {True}, "language_model": {True},
                                        "embeddings": {True}, "lm_head": {True}}


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_each_freeze_flag(arch: str) -> None:
    model = load(arch)
    apply_freeze_config(model, freeze_vision_tower=False, freeze_embeddings=True)
    seen = trainable_by_part(model)
    assert seen["embeddings"] == {False} and seen["vision_tower"] == {True}
    assert seen["language_model"] == {False, True}  # the layers still train

    model = load(arch)
    apply_freeze_config(model, freeze_vision_tower=False, freeze_language_model=True)
    assert trainable_by_part(model) == {"vision_tower": {True}, "projector": {True}, "language_model": {False},
                                        "embeddings": {False}, "lm_head": {True}}

    model = load(arch)
    counts = apply_freeze_config(model, freeze_vision_tower=True, freeze_embeddings=True, freeze_language_model=True)
    parts = vlm_parts(model)
    still = {n for n, p in model.named_parameters() if p.requires_grad}
    assert still and all(under(n, parts["projector"] + parts["lm_head"]) for n in still)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_lora_excludes_keep_adapters_on_the_language_model(arch: str) -> None:
    model = load(arch)
    parts = vlm_parts(model)
    lm_linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and under(n, parts["language_model"])}
    excludes = language_model_lora_excludes(model)
    assert apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True, exclude_modules=excludes)) == len(
        lm_linears)
    assert {name for name, _ in lora_modules(model)} == lm_linears


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_frozen_tower_gets_no_gradients(arch: str) -> None:
    model = load(arch)
    apply_freeze_config(model)
    parts = vlm_parts(model)
    out = model(**(batch := one_image_batch(arch)), labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if under(name, parts["vision_tower"]) and not under(name, parts["projector"]):
            assert param.grad is None, name
    projector_grads = [p.grad for n, p in model.named_parameters() if under(n, parts["projector"])]
    assert projector_grads and all(g is not None and g.abs().sum() > 0 for g in projector_grads)
    assert model.get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("arch", TINY_VLM_ARCHS)
def test_from_config(arch: str) -> None:
    from transformers import AutoConfig

    model = NeMoAutoModelForImageTextToText.from_config(tiny_vlm_dir(arch))
    assert type(model).__name__ == type(load(arch)).__name__
    assert next(model.parameters()).dtype == torch.float32
    again = NeMoAutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tiny_vlm_dir(arch)),
                                                        torch_dtype="bf16")
    assert next(again.parameters()).dtype == torch.bfloat16


def test_loader_options() -> None:
    assert nemo_like.NeMoAutoModelForImageTextToText is NeMoAutoModelForImageTextToText
    model = NeMoAutoModelForImageTextToText.from_pretrained(
        str(tiny_vlm_dir("llava")), torch_dtype="auto", text_config={"use_cache": False}, use_sdpa_patching=True,
        force_hf=True,
    )
    assert model.config.get_text_config().use_cache is False
    with pytest.raises(ValueError, match="model.text_config.no_such_field"):
        NeMoAutoModelForImageTextToText.from_pretrained(ID_OF["llava"], text_config={"no_such_field": 1})
    with pytest.raises(ValueError, match="pass only one"):
        NeMoAutoModelForImageTextToText.from_pretrained(ID_OF["llava"], dtype="float32", torch_dtype="bf16")
    with pytest.raises(TypeError, match="from_pretrained"):
        NeMoAutoModelForImageTextToText()


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_paths_are_one_line_errors(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        NeMoAutoModelForImageTextToText.from_pretrained(str(tmp_path / "missing_model"))
    assert "missing_model" in one_line(err)
    with pytest.raises(ValueError) as err:
        NeMoAutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert "LlamaConfig is not an image-text-to-text model config" in one_line(err)
    with pytest.raises((OSError, ValueError)) as err:
        NeMoAutoModelForImageTextToText.from_pretrained(str(tmp_path))
    assert one_line(err).startswith(f"{tmp_path}: not a loadable model directory")


def test_parts_of_a_text_only_model_is_one_line_error(tiny_model_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError) as err:
        vlm_parts(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert one_line(err).startswith("LlamaForCausalLM: cannot find its vision_tower, projector")
