"""Intra-op threads for decoding on a shared CPU: no more than the cores other processes leave free.

Why: decoding runs many small matmuls, each ending at a barrier of all intra-op threads, so one
thread that loses its core to another process stalls every token. Measured with the exact-match
eval of the quickstart on 2 cores (``benchmarks/eval_contention.py``): with 8 busy processes
beside it, one thread took 19.3 s where two took 61.6 s; on a quiet machine two threads are the
faster. The other processes' load is sampled over a short window from ``/proc/stat`` (busy
time of all cores, less this process's own), not read from the load average, which counts this
run itself and trails by a minute. The count is only ever lowered, never raised above the
caller's, and only while the decoding runs on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator

import torch

WINDOW_S = 0.05  # the sample: 5 clock ticks a core (100 a second), short beside a decode


def _busy_ticks() -> int | None:
    """Busy clock ticks of all cores since boot (user, nice, system, irq, softirq, steal), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return user + nice + system + irq + softirq + steal


def others_busy_cores(window_s: float = WINDOW_S) -> float | None:
    """How many cores other processes kept busy over the last ``window_s`` seconds (None where unknown)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    first, own_first, start = _busy_ticks(), os.times(), time.monotonic()
    if first is None:
        return None
    time.sleep(window_s)
    last, own_last, elapsed = _busy_ticks(), os.times(), time.monotonic() - start
    if last is None or elapsed <= 0:
        return None
    own = (own_last.user + own_last.system) - (own_first.user + own_first.system)
    return max(0.0, (last - first) / ticks_per_s - own) / elapsed


def free_cores(window_s: float = WINDOW_S) -> int | None:
    """Cores this process may use that other processes left free over the window (at least 1), or None."""
    others = others_busy_cores(window_s)
    if others is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, math.floor(cores - min(others, cores) + 0.5))  # a core less than half used counts as free


def _several_ranks() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def decoding_threads(device: torch.device | str | None = None, enabled: bool = True,
                     window_s: float = WINDOW_S) -> Iterator[int]:
    """Run the block on ``min(current threads, free cores)`` intra-op threads when ``device`` is the CPU.

    Yields the thread count in use; the previous count comes back afterwards. Left alone when
    ``enabled`` is false, and across several ranks: ranks that decode together must compute
    alike, and their loads differ.
    """
    before = torch.get_num_threads()
    if (not enabled or before <= 1 or (device is not None and torch.device(device).type != "cpu")
            or _several_ranks()):
        yield before
        return
    free = free_cores(window_s)
    threads = before if free is None else min(before, free)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)
