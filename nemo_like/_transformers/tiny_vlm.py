"""Tiny vision-language models built offline, for tests and quick runs without the hub.

Each architecture (Idefics3/SmolVLM, LLaVA, Qwen2-VL) is written once as an
ordinary transformers directory: seeded random weights in safetensors, the
SmolLM2 tokenizer with the architecture's image tokens added, a ChatML chat
template that renders image parts, and the image-processor config. So
``AutoModelForImageTextToText`` and ``AutoProcessor`` load it unchanged (Qwen2-VL's
processor needs torchvision, as in transformers itself), and a forward/backward
takes milliseconds. The ids ``nemo-like/tiny-<arch>`` resolve to these directories
through ``resolve_pretrained_path``. What the models are is in ``tiny_vlm_recipe``.
"""

from __future__ import annotations

from pathlib import Path

from nemo_like._transformers.embedded import tiny_vlm_model_dir
from nemo_like._transformers.tiny_vlm_recipe import TINY_VLM_ARCHS, TINY_VLM_IDS, chat_template, tiny_vlm_arch

__all__ = ["TINY_VLM_ARCHS", "TINY_VLM_IDS", "chat_template", "tiny_vlm_arch", "tiny_vlm_dir"]


def tiny_vlm_dir(arch: str, root: Path | None = None) -> Path:
    """The directory of the tiny ``arch`` model, built on first use.

    It is ``root/<arch>``, by default ``nemo_like_home()/tiny_vlm/<arch>``; the build is
    deterministic, written to a temporary sibling and renamed under a lock file, so
    parallel processes share one build and never read a half-written directory.
    """
    return tiny_vlm_model_dir(arch, root)
