"""A model's processor (tokenizer, image processor, chat template), also where its video processor cannot load.

Why: transformers builds every part of a processor, and some video processors need
torchvision (Qwen2-VL's, for one). On a machine without it an image-text fine-tune would
fail for a part it never uses, so the processor is built without that part, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger("nemo_like")

_PROCESSOR_FILES = ("processor_config.json", "video_preprocessor_config.json")


def load_processor(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``; when only its video part needs a missing library, the rest of it."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(name_or_path, **kwargs)
    except ImportError as err:
        if "video" not in str(err).lower():
            raise
        processor = _images_only(Path(name_or_path), kwargs)
        if processor is None:
            raise
        why = ("torchvision is not installed" if "torchvision" in str(err).lower() else
               next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__))
        logger.warning("%s: processor loaded without its video processor (%s); image and text inputs only",
                       name_or_path, why)
        return processor


def _images_only(directory: Path, kwargs: dict[str, Any]) -> Any:
    """The directory's processor class built from its tokenizer and image processor, its video processor None."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    config = directory / "processor_config.json"
    if not config.is_file():
        return None
    name = json.loads(config.read_text(encoding="utf-8")).get("processor_class")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        return None
    loaders = {"image_processor": AutoImageProcessor, "tokenizer": AutoTokenizer}
    parts: dict[str, Any] = {}
    for attribute in cls.get_attributes():
        if "video" in attribute:
            parts[attribute] = None
        elif attribute in loaders:
            extra = kwargs if attribute == "image_processor" else {}
            parts[attribute] = loaders[attribute].from_pretrained(directory, **extra)
        else:
            return None
    template = directory / "chat_template.jinja"
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    processor = _without_video(cls)(**parts, chat_template=chat_template)
    processor._source_dir = str(directory)
    return processor


def _without_video(cls: type) -> type:
    """``cls`` taking None for its video processor, and saving the parts it has."""

    def check_argument_for_proper_class(self: Any, name: str, argument: Any) -> Any:
        if argument is None and "video" in name:
            return None
        return cls.check_argument_for_proper_class(self, name, argument)

    def save_pretrained(self: Any, save_directory: str | os.PathLike, **options: Any) -> list[str]:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out, **options)
        self.image_processor.save_pretrained(out, **options)
        if self.chat_template:
            (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        for name in _PROCESSOR_FILES:  # the video part's settings, kept for a machine that can load it
            source = Path(self._source_dir or "") / name
            if self._source_dir and source.is_file() and source.resolve() != (out / name).resolve():
                shutil.copyfile(source, out / name)
        return [str(out)]

    return type(cls.__name__, (cls,), {"__module__": cls.__module__, "_source_dir": None,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                                       "check_argument_for_proper_class": check_argument_for_proper_class,
                                       "save_pretrained": save_pretrained})
