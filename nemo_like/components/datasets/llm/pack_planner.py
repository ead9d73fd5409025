"""Which document pieces go into which pack, planned from document lengths alone.

Why: packing a million documents must not touch (or copy) their tokens to decide where they go,
nor cost more than about one cheap step per document. The plan is three flat arrays (piece ->
document, start, length) plus pack offsets, so it stays small however many documents there are;
:class:`~nemo_like.components.datasets.llm.packed_sequence.PackedSequence` builds each pack's
tokens only when it is read.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nemo_like.components.loggers.phase_progress import PhaseProgress

logger = logging.getLogger("nemo_like")

STRATEGIES = ("max_fill", "best_fit", "sequential")
# max_fill costs up to (packs x distinct lengths) bitset steps; past this many it would take
# tens of seconds at set-up, so the fuller of best fit and best-fit-decreasing (one step per
# document) is used instead.
MAX_FILL_STEP_BUDGET = 20_000_000
PROGRESS_FROM = 100_000  # documents: a plan of this many takes about a second (a test's size for progress lines)


@dataclass
class PackPlan:
    """Pack ``p`` holds pieces ``pack_offsets[p]:pack_offsets[p + 1]``, each ``doc[i]``'s tokens
    ``start[i]:start[i] + length[i]``, in the order they appear in the pack."""

    pack_offsets: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray
    strategy: str  # the strategy that ran (max_fill past its budget runs best_fit or best_fit_decreasing)

    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    @property
    def tokens(self) -> int:
        return int(self.length.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        """The plan as plain arrays, to store."""
        return {"pack_offsets": self.pack_offsets, "doc": self.doc, "start": self.start, "length": self.length,
                "strategy": np.array(self.strategy)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PackPlan:
        return cls(arrays["pack_offsets"], arrays["doc"], arrays["start"], arrays["length"], str(arrays["strategy"]))

    def truncated(self, packs: int) -> PackPlan:
        """The first ``packs`` packs only (``max_packs``)."""
        packs = max(0, min(int(packs), len(self)))
        end = int(self.pack_offsets[packs])
        return PackPlan(self.pack_offsets[: packs + 1], self.doc[:end], self.start[:end], self.length[:end],
                        self.strategy)


def fullest_subset(counts: dict[int, int], size: int) -> dict[int, int]:
    """How many documents of each length fill ``size`` tokens the most (exact bounded subset sum).

    Reachable totals are bits of one integer; each length enters in binary-split chunks so
    that ``c`` copies cost ``log c`` steps. Lengths are tried in the order given, and the
    walk back prefers earlier ones, so passing them longest first keeps long documents
    from being left to the last, half-empty packs.
    """
    mask = (1 << (size + 1)) - 1
    reach, before, steps = 1, [], []
    for length, count in counts.items():
        copies, chunk = min(count, size // length), 1
        while copies > 0:
            take = min(chunk, copies)
            before.append(reach)
            reach = (reach | (reach << (length * take))) & mask
            steps.append((length, take))
            copies -= take
            chunk *= 2
    total, chosen = reach.bit_length() - 1, {}
    for j in range(len(steps) - 1, -1, -1):
        if not (before[j] >> total) & 1:  # this total needs step j
            length, take = steps[j]
            chosen[length] = chosen.get(length, 0) + take
            total -= length * take
    return chosen


def _no_progress(done: int) -> None:
    pass


def best_fit_bins(lengths: Sequence[int], size: int, tick: Callable[[int], Any] = _no_progress
                  ) -> tuple[list[int], int]:
    """Best fit in the order given: each piece goes to the open bin with the least room that holds it.

    Open bins sit in buckets by free room (a heap of bin numbers each, so ties go to the oldest
    bin) and one integer has bit ``r`` set while bucket ``r`` is not empty: the tightest bucket
    is the lowest set bit at or above the length, so a placement costs O(log n), not O(bins).
    Returns the bin of every piece and the number of bins.
    """
    buckets: list[list[int]] = [[] for _ in range(size + 1)]
    nonempty, bins = 0, 0
    where = [0] * len(lengths)
    for i, n in enumerate(lengths):
        if not i & 0xFFFF:
            tick(min(0x10000, len(lengths) - i))
        above = nonempty >> n
        if above:
            free = n + (above & -above).bit_length() - 1
            heap = buckets[free]
            index = heapq.heappop(heap)
            if not heap:
                nonempty ^= 1 << free
        else:
            free, index = size, bins
            bins += 1
        where[i] = index
        left = free - n
        if left > 0:
            heap = buckets[left]
            if not heap:
                nonempty |= 1 << left
            heapq.heappush(heap, index)
    return where, bins


def max_fill_steps(lengths: np.ndarray, size: int) -> float:
    """Rough count of bitset steps max_fill would take: packs x chunked distinct lengths."""
    values, counts = np.unique(np.minimum(lengths, size), return_counts=True)
    per_pack = sum(min(int(c), size // int(n)).bit_length() for n, c in zip(values, counts))
    return per_pack * float(lengths.sum()) / size


def _cut_long(lengths: np.ndarray, size: int) -> tuple[list[tuple[int, int, int]], np.ndarray, np.ndarray]:
    """Whole-pack pieces ``(doc, start, size)`` of documents longer than a pack, and every document's rest."""
    full: list[tuple[int, int, int]] = []
    starts = np.zeros(len(lengths), dtype=np.int64)
    for doc in np.flatnonzero(lengths > size).tolist():
        whole = (int(lengths[doc]) - 1) // size  # the rest keeps 1..size tokens
        full += [(doc, k * size, size) for k in range(whole)]
        starts[doc] = whole * size
    return full, starts, lengths - starts


def _plan(pieces_doc: np.ndarray, pieces_start: np.ndarray, pieces_len: np.ndarray, pack_of: np.ndarray,
          packs: int, strategy: str) -> PackPlan:
    """Group pieces by pack, keeping their given order inside a pack (a stable sort)."""
    order = np.argsort(pack_of, kind="stable")
    offsets = np.zeros(packs + 1, dtype=np.int64)
    np.cumsum(np.bincount(pack_of, minlength=packs), out=offsets[1:])
    return PackPlan(offsets, pieces_doc[order], pieces_start[order], pieces_len[order], strategy)


def _with_full(full: list[tuple[int, int, int]], rest_doc: np.ndarray, rest_start: np.ndarray,
               rest_len: np.ndarray, rest_pack: np.ndarray, rest_packs: int, strategy: str) -> PackPlan:
    """The whole-pack pieces first (one pack each), then the packs of the rests."""
    f = np.asarray(full, dtype=np.int64).reshape(-1, 3)
    doc = np.concatenate([f[:, 0], rest_doc])
    start = np.concatenate([f[:, 1], rest_start])
    length = np.concatenate([f[:, 2], rest_len])
    pack = np.concatenate([np.arange(len(f), dtype=np.int64), rest_pack + len(f)])
    return _plan(doc, start, length, pack, len(f) + rest_packs, strategy)


def _sequential(lengths: np.ndarray, size: int, split: bool, tick: Callable[[int], Any]) -> PackPlan:
    docs, starts, lens, packs = [], [], [], []
    pack, used = 0, 0
    for doc, n in enumerate(lengths.tolist()):
        if not doc & 0xFFFF:
            tick(min(0x10000, len(lengths) - doc))
        if n > size - used and not split:
            pack, used = pack + 1, 0
        start = 0
        while start < n:
            if used == size:
                pack, used = pack + 1, 0
            take = min(size - used, n - start)
            docs.append(doc), starts.append(start), lens.append(take), packs.append(pack)
            used += take
            start += take
    pack_of = np.asarray(packs, dtype=np.int64)
    packs_n = int(pack_of[-1]) + 1 if len(pack_of) else 0
    as_array = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return _plan(as_array(docs), as_array(starts), as_array(lens), pack_of, packs_n, "sequential")


def _best_fit(lengths: np.ndarray, size: int, decreasing: bool, tick: Callable[[int], Any] = _no_progress
              ) -> PackPlan:
    full, starts, rest = _cut_long(lengths, size)
    docs = np.arange(len(lengths), dtype=np.int64)
    order = np.argsort(-rest, kind="stable") if decreasing else docs
    where, bins = best_fit_bins(rest[order].tolist(), size, tick)
    pack = np.empty(len(lengths), dtype=np.int64)
    pack[order] = np.asarray(where, dtype=np.int64)
    return _with_full(full, docs, starts, rest, pack, bins, "best_fit_decreasing" if decreasing else "best_fit")


def _max_fill(lengths: np.ndarray, size: int, step_budget: float | None = None,
              tick: Callable[[int], Any] = _no_progress) -> PackPlan | None:
    """Pack after pack, the longest document left opens it and the fullest subset of the rest fills it.

    While every length a pack takes is left more often than it could fit (the subset sum sees
    ``min(count, room // length)``), the next pack makes the same choice; such a run of packs is
    placed at once, so few distinct lengths cost few subset sums however many documents there are.
    ``None`` once the subset sums pass ``step_budget`` bitset steps.
    """
    full, starts, rest = _cut_long(lengths, size)
    order = np.argsort(rest, kind="stable")  # grouped by length, dataset order inside a group
    values, firsts, sizes = np.unique(rest[order], return_index=True, return_counts=True)
    queue = {int(n): order[f : f + c] for n, f, c in zip(values.tolist(), firsts.tolist(), sizes.tolist())}
    head, left = dict.fromkeys(queue, 0), {n: len(q) for n, q in queue.items()}
    pack = np.empty(len(lengths), dtype=np.int64)
    packs, steps = 0, 0
    while left:
        longest = max(left)
        room = size - longest
        counts = {n: left[n] - (n == longest) for n in sorted(left, reverse=True) if left[n] - (n == longest)}
        steps += sum(min(c, room // n).bit_length() for n, c in counts.items())
        if step_budget is not None and steps > step_budget:
            return None
        use = fullest_subset(counts, room)
        use[longest] = use.get(longest, 0) + 1
        repeat = min(
            ((left[n] - 1) // u + 1 if room // n == 0  # only the opener: as long as one is left
             else (counts.get(n, 0) - room // n) // u + 1 if counts.get(n, 0) >= room // n else 1)
            for n, u in use.items()
        )
        for n, u in use.items():
            take = repeat * u
            pack[queue[n][head[n] : head[n] + take]] = packs + np.arange(take) // u
            head[n] += take
            left[n] -= take
            if not left[n]:
                del left[n]
        tick(repeat * sum(use.values()))
        packs += repeat
    docs = np.arange(len(lengths), dtype=np.int64)
    return _with_full(full, docs, starts, rest, pack, packs, "max_fill")  # dataset order inside a pack


def plan_packs(lengths: Sequence[int] | np.ndarray, size: int, strategy: str = "max_fill",
               split_across_pack: bool = False) -> PackPlan:
    """Plan the packs of documents with these token counts (all > 0; longer than ``size`` only when split).

    Inside a pack the pieces keep their document order. ``max_fill`` stops once its subset sums pass
    :data:`MAX_FILL_STEP_BUDGET` bitset steps (many distinct lengths, many documents) and the fuller
    of ``best_fit`` and best-fit-decreasing is used instead (logged): on such varied lengths both
    are within a fraction of a point of it, at one cheap step per document.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"packed_sequence.packing_strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    # Count and time-left lines (plain log lines, so a log file reads like the terminal) when planning runs long.
    progress = PhaseProgress(f"packing ({strategy})", len(lengths), "documents")
    if strategy == "sequential":
        return _sequential(lengths, size, split_across_pack, progress.update)
    if strategy == "best_fit":
        return _best_fit(lengths, size, decreasing=False, tick=progress.update)
    if max_fill_steps(lengths, size) <= MAX_FILL_STEP_BUDGET:  # cheap however it goes
        return _max_fill(lengths, size, tick=progress.update)  # type: ignore[return-value]
    # Cheap when few lengths repeat a lot; a step costs about size / 64 words, so the budget of
    # the attempt is in words (the step budget at 2048 tokens), lest a large size run for half a minute.
    words = MAX_FILL_STEP_BUDGET * (2048 // 64 + 1) / (size // 64 + 1)
    plan = _max_fill(lengths, size, step_budget=words, tick=progress.update)
    if plan is None:
        progress = PhaseProgress("packing (best_fit_decreasing)", len(lengths), "documents")
        plan = min(_best_fit(lengths, size, decreasing=True, tick=progress.update),
                   _best_fit(lengths, size, decreasing=False), key=len)
        logger.warning("packed sequences: %d documents are too many for max_fill at set-up; using %s",
                       len(lengths), plan.strategy)
    return plan


__all__: Sequence[str] = ("MAX_FILL_STEP_BUDGET", "PackPlan", "STRATEGIES", "best_fit_bins", "fullest_subset",
                          "plan_packs")
