"""Give the pages a backward freed back to the OS before the next forward (CPU, glibc only).

Why: PyTorch's CPU tensors come from ``malloc``. Once a step has freed its activations,
glibc keeps most of that memory mapped in the heap, split around the few blocks still in
use, and the next forward often cannot reuse the pieces: the process's resident memory
climbs hundreds of MiB above what is live. ``malloc_trim(0)`` hands every whole free page
back (``madvise``) without moving anything, so each forward starts from the memory that is
really in use. The price is the page faults of touching that memory again (measured in
docs/performance.md). Elsewhere (CUDA tensors, macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_cpu_heap() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
