"""What a tiny offline vision-language model is: its config, tokens, chat template and processor files.

The writer takes the SmolLM2 tokenizer directory as an argument and imports nothing
else from nemo_like, so the path resolver can build these models without an import
circle; building once, under a lock, is done by ``embedded.tiny_vlm_model_dir`` and
the public entry point is :func:`nemo_like._transformers.tiny_vlm.tiny_vlm_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_VLM_ARCHS = ("idefics3", "llava", "qwen2_vl")
TINY_VLM_IDS = {f"nemo-like/tiny-{arch.replace('_', '-')}": arch for arch in TINY_VLM_ARCHS}

# Bump when the recipe below changes, so cached directories of an older recipe are rebuilt.
BUILD_VERSION = 1
MARKER_FILE = "nemo_like_source.json"
_SEED = 0
_IMAGE_SIZE = 32
_PATCH = 8
_HIDDEN = 64

# How an image part of a message appears in the prompt, before the processor expands it.
_IMAGE_PLACEHOLDER = {
    "idefics3": "<image>",
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}
_SPECIAL_TOKENS = {
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
    "llava": ["<image>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


def chat_template(arch: str) -> str:
    """ChatML with content lists: text parts verbatim, image parts as the architecture's placeholder.

    Every turn is ``<|im_start|>role\\n ... <|im_end|>\\n``, so assistant spans can be located
    the same way for all three architectures.
    """
    image = _IMAGE_PLACEHOLDER[arch]
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def tiny_vlm_arch(name_or_path: str) -> str | None:
    """The architecture behind a ``nemo-like/tiny-*`` id (case-insensitive), else None."""
    key = str(name_or_path).strip().rstrip("/").casefold()
    return next((arch for tiny_id, arch in TINY_VLM_IDS.items() if tiny_id == key), None)


def is_built(directory: Path) -> bool:
    """True when ``directory`` holds a finished build of the current recipe (the marker is written last)."""
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("build_version") == BUILD_VERSION


def write_tiny_vlm(arch: str, out_dir: Path, tokenizer_dir: str) -> None:
    """Write config, seeded weights, tokenizer, processor files and the marker (last) into ``out_dir``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS[arch]})
    tokenizer.chat_template = chat_template(arch)
    config = _CONFIGS[arch](tokenizer)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    _PROCESSORS[arch](tokenizer, out_dir)

    marker = {"model_id": f"nemo-like/tiny-{arch.replace('_', '-')}", "arch": arch, "seed": _SEED,
              "tokenizer": "SmolLM2-135M-Instruct plus the image tokens", "build_version": BUILD_VERSION}
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _text_fields(tokenizer: Any) -> dict[str, Any]:
    """A two-layer decoder whose vocabulary is the tokenizer's."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _vision_fields() -> dict[str, Any]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": _IMAGE_SIZE, "patch_size": _PATCH}


def _idefics3_config(tokenizer: Any) -> Any:
    from transformers import Idefics3Config

    text = {"model_type": "llama", **_text_fields(tokenizer)}
    return Idefics3Config(text_config=text, vision_config=_vision_fields(), scale_factor=2,
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
                          pad_token_id=tokenizer.pad_token_id)


def _llava_config(tokenizer: Any) -> Any:
    from transformers import LlavaConfig

    text = {"model_type": "llama", **_text_fields(tokenizer)}
    vision = {"model_type": "clip_vision_model", "projection_dim": _HIDDEN, **_vision_fields()}
    tokens = (_IMAGE_SIZE // _PATCH) ** 2 + 1  # patches plus CLS, all kept by the "full" strategy
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_id, image_seq_length=tokens,
                       vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=False,
                       pad_token_id=tokenizer.pad_token_id)


def _qwen2_vl_config(tokenizer: Any) -> Any:
    from transformers import Qwen2VLConfig

    text = {**_text_fields(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": _HIDDEN, "num_heads": 2, "mlp_ratio": 2,
              "patch_size": _PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2}
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                         video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                         vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)


def _idefics3_processor(tokenizer: Any, out_dir: Path) -> None:
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": _IMAGE_SIZE},
                                       max_image_size={"longest_edge": _IMAGE_SIZE})
    seq_len = (_IMAGE_SIZE // _PATCH) ** 2 // 4  # patches over scale_factor**2
    Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=seq_len,
                      chat_template=chat_template("idefics3")).save_pretrained(out_dir)


def _llava_processor(tokenizer: Any, out_dir: Path) -> None:
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    square = {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    images = LlavaImageProcessorPil(size={"shortest_edge": _IMAGE_SIZE}, crop_size=square)
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=_PATCH,
                   vision_feature_select_strategy="full", num_additional_image_tokens=1,
                   image_token="<image>", chat_template=chat_template("llava")).save_pretrained(out_dir)


def _qwen2_vl_processor(tokenizer: Any, out_dir: Path) -> None:
    """Write Qwen2-VL's processor files directly.

    ``Qwen2VLProcessor`` cannot be built without torchvision (its video processor needs it),
    so the nested ``processor_config.json`` that ``save_pretrained`` writes is written here;
    ``AutoProcessor`` loads it wherever torchvision is installed, and the image processor
    and tokenizer load on their own everywhere.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    grid = {"patch_size": _PATCH, "merge_size": 2, "temporal_patch_size": 2}
    size = {"shortest_edge": (2 * _PATCH) ** 2, "longest_edge": _IMAGE_SIZE**2}
    images = Qwen2VLImageProcessorPil(size=size, **grid).to_dict()
    images["image_processor_type"] = "Qwen2VLImageProcessor"
    videos = {"video_processor_type": "Qwen2VLVideoProcessor", "size": size, **grid}
    fields = {"image_processor": images, "video_processor": videos, "processor_class": "Qwen2VLProcessor"}
    (out_dir / "processor_config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(chat_template("qwen2_vl"))


_CONFIGS = {"idefics3": _idefics3_config, "llava": _llava_config, "qwen2_vl": _qwen2_vl_config}
_PROCESSORS = {"idefics3": _idefics3_processor, "llava": _llava_processor, "qwen2_vl": _qwen2_vl_processor}
