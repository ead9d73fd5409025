"""One weights file for two names: ``model/model.safetensors`` is the consolidated directory's file when they agree.

Why: a full fine-tune's step directory holds the weights for the resume (``model/``) and as
a plain Hugging Face directory (``model/consolidated/``). Written twice, they cost twice the
bytes and the time of ``save_pretrained``. When ``save_pretrained`` wrote one file holding
exactly the tensors the resume reads (same names, dtypes and shapes; the bytes come from the
same tensors), the resume's name is a hard link to it, or a copy where the filesystem has
no links. Otherwise (sharded files, renamed tensors) the resume's file is written as before.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from safetensors import safe_open

logger = logging.getLogger("nemo_like")


def same_tensors(path: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether the safetensors file ``path`` holds exactly ``state``'s names with their dtypes and shapes (headers only)."""
    if not os.path.isfile(path):
        return False
    try:
        with safe_open(path, framework="pt") as f:
            if set(f.keys()) != set(state):
                return False
            for name in f.keys():
                view = f.get_slice(name)
                if tuple(view.get_shape()) != tuple(state[name].shape) or _dtype(view.get_dtype()) != state[name].dtype:
                    return False
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def _dtype(name: str) -> torch.dtype | None:
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}.get(name)


def link_or_copy(source: str, target: str) -> str:
    """``target`` as a hard link to ``source`` (a copy where links fail); returns how it was made."""
    try:
        os.link(source, target)
        return "link"
    except OSError as e:
        logger.debug("no hard link %s -> %s (%s); copying", target, source, e)
        shutil.copyfile(source, target)
        return "copy"
