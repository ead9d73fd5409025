"""The ``LATEST`` / ``LOWEST_VAL`` files at the checkpoint root, written atomically and read strictly.

A pointer that holds anything but a step directory name, or names a directory that is
not there, is an error: resuming from some other step would silently rewind the run.
"""

from __future__ import annotations

import os
import re

from nemo_like.components.checkpoint.errors import FRESH_HINT, CheckpointError

TMP_PREFIX = ".tmp_"
STEP_DIR = re.compile(r"^epoch_(\d+)_step_(\d+)$")
LATEST = "LATEST"
LOWEST_VAL = "LOWEST_VAL"


def fsync_path(path: str) -> None:
    """Flush a file's data, or a directory's entries (renames, new names: a power cut must not undo a pointer
    move), to disk; a path that cannot be opened or flushed is left (the caller's next durable step reports real
    trouble)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write under a ``.tmp_`` name, fsync, rename: readers see the old text or the new, never a torn one."""
    tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_pointer(root: str, name: str) -> str | None:
    """The step directory a pointer names, checked; None when there is no pointer file.

    Raises a one-line ``CheckpointError`` for a pointer that is not a step directory name or
    that names a directory missing from ``root``.
    """
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read(4096)
    target = raw.decode("utf-8", errors="replace").strip()
    if not STEP_DIR.match(target):
        shown = target if len(target) <= 60 else target[:57] + "..."
        raise CheckpointError(
            f"checkpoint.restore_from: {path} holds {shown!r}, not a step directory name (epoch_E_step_S); "
            f"write the name of a complete step directory into it, or {FRESH_HINT}"
        )
    if not os.path.isdir(os.path.join(root, target)):
        raise CheckpointError(
            f"checkpoint.restore_from: {path} names {target}, which does not exist in {root}; "
            f"write the name of a complete step directory into it, or {FRESH_HINT}"
        )
    return target


def pointer_or_none(root: str, name: str) -> str | None:
    """The pointer's target when it is valid, else None; for housekeeping that must never fail."""
    try:
        return read_pointer(root, name)
    except (CheckpointError, OSError):
        return None
