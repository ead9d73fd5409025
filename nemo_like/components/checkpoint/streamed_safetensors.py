"""A safetensors file written one tensor at a time, each tensor computed only when its turn comes.

Why: ``safetensors.torch.save_file`` needs every tensor in memory at once. A LoRA run's
merged export (the base weights with the adapters folded in) would then hold a merged copy
of every adapted matrix, or, as before, a deep copy of the whole model. Here the header is
written from names, dtypes and shapes alone, then each tensor is made, written and dropped,
so the extra memory is one tensor. The layout is the format's own (an 8-byte little-endian
header length, a JSON header padded with spaces to 8 bytes, the tensors' bytes back to
back in header order), so ``safetensors`` and ``transformers`` read the file as usual.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence

import torch

DTYPE_NAMES = {  # torch dtype -> the name safetensors gives it in a header
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}

# (name, dtype, shape, make): ``make()`` returns the tensor when it is written.
Entry = tuple[str, torch.dtype, Sequence[int], Callable[[], torch.Tensor]]


def write_streamed(path: str | os.PathLike, entries: Sequence[Entry], metadata: dict[str, str] | None = None) -> int:
    """Write ``entries`` to ``path`` in order; returns the bytes written. A made tensor must match its dtype and shape."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    at = 0
    for name, dtype, shape, _ in entries:
        if dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {dtype} has no safetensors name")
        size = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": [int(s) for s in shape], "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, dtype, shape, make in entries:
            tensor = make().detach()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(int(s) for s in shape):
                raise ValueError(f"{name}: made {tensor.dtype} {tuple(tensor.shape)}, the header says {dtype} "
                                 f"{tuple(shape)}")
            f.write(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    return 8 + len(text) + at


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
