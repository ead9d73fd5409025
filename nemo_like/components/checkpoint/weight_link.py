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

from nemo_like.components.checkpoint.streamed_safetensors import DTYPE_NAMES

logger = logging.getLogger("nemo_like")

_DTYPE_OF = {name: dtype for dtype, name in DTYPE_NAMES.items()}  # a header's dtype name -> torch dtype


def same_tensors(path: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether the safetensors file ``path`` holds exactly ``state``'s names with their dtypes and shapes (headers only)."""
    if not os.path.isfile(path):
        return False
    try:
        with safe_open(path, framework="pt") as f:
            if set(f.keys()) != set(state):
                return False
            for name in f.keys():
                view, tensor = f.get_slice(name), state[name]
                if tuple(view.get_shape()) != tuple(tensor.shape) or _DTYPE_OF.get(view.get_dtype()) != tensor.dtype:
                    return False
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def link_or_copy(source: str, target: str) -> str:
    """``target`` as a hard link to ``source`` (a copy where links fail); returns how it was made."""
    try:
        os.link(source, target)
        return "link"
    except OSError as e:
        logger.debug("no hard link %s -> %s (%s); copying", target, source, e)
        shutil.copyfile(source, target)
        return "copy"
