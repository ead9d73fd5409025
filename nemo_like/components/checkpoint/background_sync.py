"""Finished checkpoint files flushed to disk in a thread while the next ones are written.

Why: a step directory is sealed only once every file is on disk (fsync), and flushing a
gigabyte of weights and optimizer state after the last write made a save wait for the disk
as long as it took to write the files. Here each file is fsynced as soon as the next one
starts, so the save waits only for the last file; the manifest's own fsync then finds the
others clean. A flush that fails here is not reported: the manifest's fsync repeats it and
raises.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from nemo_like.components.checkpoint.pointers import fsync_path


class BackgroundSync:
    """``finished(directory)``: flush every file under it not flushed yet; ``close()`` waits for the flushes."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-fsync")
        self._seen: set[str] = set()
        self._pending: list[Future] = []

    def finished(self, directory: str, writing: str | None = None) -> None:
        """Queue the files under ``directory`` (all complete, except ``writing``, the one about to be written)."""
        if not os.path.isdir(directory):
            return
        for here, _, names in os.walk(directory):
            for name in names:
                path = os.path.join(here, name)
                if path != writing and path not in self._seen:
                    self._seen.add(path)
                    self._pending.append(self._pool.submit(fsync_path, path))

    def close(self) -> None:
        for future in self._pending:
            future.result()
        self._pool.shutdown(wait=True)
