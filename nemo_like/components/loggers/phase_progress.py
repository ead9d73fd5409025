"""Count and time-left lines for the long phases of a run: generation eval, validation, packing, checkpoint saves.

A phase that runs for minutes says how far it is as plain log lines, at most one every
``NEMO_LIKE_PROGRESS_EVERY_S`` seconds (10 by default): the same text in a terminal and in a log
file, with no carriage-return bar to garble the file. A phase shorter than that says nothing extra.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger("nemo_like")

EVERY_ENV = "NEMO_LIKE_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0

T = TypeVar("T")


def progress_interval() -> float:
    """Seconds between two progress lines of one phase (``$NEMO_LIKE_PROGRESS_EVERY_S``, default 10)."""
    value = os.environ.get(EVERY_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_EVERY_S
    except ValueError:
        return DEFAULT_EVERY_S


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short enough for a step line."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_bytes(n: int) -> str:
    """``512 B``, ``3.4 MiB``, ``1.2 GiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def time_left(elapsed_s: float, done: float, total: float) -> float | None:
    """The rest of a phase at the pace so far; None before anything is done."""
    if done <= 0:
        return None
    return elapsed_s / done * max(0.0, total - done)


class PhaseProgress:
    """``what: done/total unit (pct%), elapsed, ~left`` lines for one phase; ``update`` after each piece of work.

    Lines come at most every ``every_s`` seconds (default: ``progress_interval()``); once one has
    been said, the phase's end is said too, so a reader sees it finish.
    """

    def __init__(self, what: str, total: int, unit: str = "", enabled: bool = True, every_s: float | None = None,
                 count_format: Callable[[int], str] = str) -> None:
        self.what = what
        self.total = int(total)
        self.unit = unit
        self.enabled = enabled and self.total > 0
        self.every_s = progress_interval() if every_s is None else every_s
        self.count_format = count_format
        self.done = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._said = False
        self._ended = False

    def update(self, n: int = 1) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int) -> None:
        """Record ``done`` units finished so far (held to the total) and say so when a line is due."""
        self.done = min(int(done), self.total)
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.done >= self.total
        if self._ended or (now - self._last_line < self.every_s and not (finished and self._said)):
            return
        self._last_line, self._said, self._ended = now, True, finished
        logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.start
        left = time_left(elapsed, self.done, self.total)
        unit = f" {self.unit}" if self.unit else ""
        pace = f"~{format_duration(left)} left" if left is not None else "time left unknown yet"
        return (f"{self.what}: {self.count_format(self.done)}/{self.count_format(self.total)}{unit} "
                f"({100 * self.done / self.total:.0f}%), {format_duration(elapsed)} elapsed, {pace}")


def with_progress(items: Iterable[T], what: str, unit: str = "", total: int | None = None,
                  enabled: bool = True) -> Iterator[T]:
    """``items`` one by one, with a ``PhaseProgress`` line when one is due (``total``: ``len(items)`` if it has one)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = 0  # no length: no count to report against
    progress = PhaseProgress(what, total, unit, enabled=enabled)
    for item in items:
        yield item
        progress.update()
