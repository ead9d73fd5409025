"""Dataset mixtures: several datasets interleaved by proportion, as ``datasets.interleave_datasets`` does.

Why our own: the members are our tokenized datasets (map-style or streamed), the mixture
must resume exactly from a checkpoint when streamed, and a recipe builds it from YAML as
its ``dataset:`` section (the data builder makes the members and hands them over, built).
The sampling follows Hugging Face ``interleave_datasets`` draw for draw (the same seed
gives the same order), so a mixture tried there carries over:

* ``mixture_proportion``: the chance of drawing each member (must sum to 1); without it
  the members take turns (round robin).
* ``mixture_strategy``: ``first_exhausted`` stops right after the first member runs out
  (under-sampling); ``all_exhausted`` starts exhausted members over until every member has
  been seen whole at least once (over-sampling).

In a recipe, members carry their proportion next to their own keys::

    dataset:
      _target_: nemo_like.components.datasets.mixture.make_dataset_mixture
      mixture_strategy: all_exhausted
      seed: 42
      datasets:
        - _target_: nemo_like.components.datasets.llm.chat_dataset.ChatDataset
          path_or_dataset_id: data/chat/train.jsonl
          mixture_proportion: 0.7
        - _target_: nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
          path_or_dataset_id: data/quickstart/train.jsonl
          column_mapping: {question: question, answer: answer}
          mixture_proportion: 0.3
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from nemo_like.components.datasets.llm.row_stream import shard

STRATEGIES = ("first_exhausted", "all_exhausted")
_BLOCK = 1000  # sources are drawn in blocks of this size, as Hugging Face datasets does (same seed, same draws)


def check_mixture(
    n: int, mixture_proportion: Sequence[float] | None, mixture_strategy: str
) -> list[float] | None:
    """Validate the mixture settings; returns the proportions as floats (or None for round robin)."""
    if n == 0:
        raise ValueError("dataset.datasets: a mixture needs at least one dataset")
    if mixture_strategy not in STRATEGIES:
        raise ValueError(f"dataset.mixture_strategy: {mixture_strategy!r} is not one of {list(STRATEGIES)}")
    if mixture_proportion is None:
        return None
    props = list(mixture_proportion)
    if len(props) != n:
        raise ValueError(f"dataset.mixture_proportion: {len(props)} proportions for {n} datasets")
    for i, p in enumerate(props):
        if p is None or not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"dataset.datasets.{i}.mixture_proportion: expected a number in [0, 1], got {p!r}")
    total = math.fsum(props)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"dataset.mixture_proportion: proportions {props} sum to {total:g}, not 1")
    if mixture_strategy == "all_exhausted" and any(p == 0 for p in props):
        zero = [i for i, p in enumerate(props) if p == 0]
        raise ValueError(f"dataset.mixture_proportion: datasets {zero} have proportion 0 and can never be "
                         "exhausted; all_exhausted would not end")
    return [float(p) for p in props]


class _SourceDraws:
    """The member to take next: round robin, or seeded draws in blocks as ``numpy.random.Generator.choice``."""

    def __init__(self, n: int, proportions: list[float] | None, seed: int | None, start: int = 0) -> None:
        self.n, self.proportions, self.seed = n, proportions, seed
        self.count = 0
        self._block: np.ndarray | None = None
        self._rng = np.random.default_rng(seed) if proportions is not None else None
        if proportions is not None:
            for _ in range(start // _BLOCK):  # skip whole blocks on resume
                self._next_block()
            if start % _BLOCK:
                self._next_block()
        self.count = start

    def _next_block(self) -> np.ndarray:
        assert self._rng is not None
        self._block = self._rng.choice(self.n, size=_BLOCK, p=self.proportions)
        return self._block

    def __next__(self) -> int:
        if self.proportions is None:
            source = self.count % self.n
        else:
            if self.count % _BLOCK == 0:
                self._next_block()
            source = int(self._block[self.count % _BLOCK])  # type: ignore[index]
        self.count += 1
        return source


def mixture_indices(
    lengths: Sequence[int], mixture_proportion: Sequence[float] | None = None,
    mixture_strategy: str = "first_exhausted", seed: int | None = None,
) -> list[tuple[int, int]]:
    """The ``(member, row)`` order of a map-style mixture over members of the given lengths."""
    props = check_mixture(len(lengths), mixture_proportion, mixture_strategy)
    empty = [i for i, n in enumerate(lengths) if n == 0 and (props is None or props[i] > 0)]
    if empty:
        raise ValueError(f"dataset.datasets: members {empty} are empty")
    if props is None:  # round robin in whole rounds: as many as the shortest (or longest) member has rows
        rounds = min(lengths) if mixture_strategy == "first_exhausted" else max(lengths)
        return [(source, r % lengths[source]) for r in range(rounds) for source in range(len(lengths))]
    draws = _SourceDraws(len(lengths), props, seed)
    taken = [0] * len(lengths)
    done = [props[i] == 0 for i in range(len(lengths))]  # never drawn: cannot stop anything
    order: list[tuple[int, int]] = []
    while True:
        source = next(draws)
        order.append((source, taken[source] % lengths[source]))
        taken[source] += 1
        if taken[source] == lengths[source]:
            done[source] = True
            reachable = [d for i, d in enumerate(done) if props[i] > 0]
            if mixture_strategy == "first_exhausted" or all(reachable):
                return order


def _member_pad_id(datasets: Sequence[Any], tokenizer: Any) -> int | None:
    for ds in datasets:
        pad = getattr(ds, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return None if pad is None else int(pad)
    return None


class MapDatasetMixture(Dataset):
    """Map-style members interleaved once, at build time: item ``i`` is one row of one member."""

    def __init__(
        self,
        datasets: Sequence[Any],
        mixture_proportion: Sequence[float] | None = None,
        mixture_strategy: str = "first_exhausted",
        seed: int | None = 42,
        tokenizer: Any = None,
    ) -> None:
        self.datasets = list(datasets)
        self.mixture_strategy = mixture_strategy
        self.order = mixture_indices([len(d) for d in self.datasets], mixture_proportion, mixture_strategy, seed)
        self.pad_token_id = _member_pad_id(self.datasets, tokenizer)
        counts = [0] * len(self.datasets)
        for source, _ in self.order:
            counts[source] += 1
        self.counts = counts  # rows taken from each member (with repeats under all_exhausted)

    @property
    def locations(self) -> list[str]:
        """Where each row came from, for error messages (``file:line`` when the member kept it)."""
        out = []
        for source, row in self.order:
            where = getattr(self.datasets[source], "locations", None)
            out.append(str(where[row]) if where is not None and row < len(where) else f"dataset {source} row {row}")
        return out

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> Any:
        source, row = self.order[idx]
        return self.datasets[source][row]


class _Member:
    """One member of a streamed mixture: an iterator that can say where it is and start over.

    Streams with ``state_dict`` resume from it; map-style members walk their rows (dealt
    over ranks and workers); other streams are replayed up to where they were.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        if not isinstance(dataset, IterableDataset):
            self.kind = "map"
        elif hasattr(dataset, "state_dict") and hasattr(dataset, "load_state_dict"):
            self.kind = "stateful"
        else:
            self.kind = "replay"
        if self.kind != "map" and hasattr(dataset, "repeat_on_exhaustion"):
            dataset.repeat_on_exhaustion = False  # the mixture decides when a member starts over
        self._iter: Iterator[Any] | None = None
        self._consumed = 0
        self.initial = self.position()

    def position(self) -> dict[str, Any]:
        """Where the next item of this member is."""
        if self.kind == "stateful":
            return {"state": self.dataset.state_dict()}
        return {"consumed": self._consumed}

    def restore(self, position: dict[str, Any]) -> None:
        if self.kind == "stateful":
            self.dataset.load_state_dict(position["state"])
        self._consumed = int(position.get("consumed", 0))
        self._iter = None

    def restart(self) -> None:
        """The member's next pass (a stream that ended already points at it)."""
        self._consumed = 0
        self._iter = None

    def _open(self) -> Iterator[Any]:
        if self.kind == "map":
            me, readers = shard()
            return (self.dataset[i] for i in range(me + self._consumed * readers, len(self.dataset), readers))
        it = iter(self.dataset)
        for _ in range(self._consumed if self.kind == "replay" else 0):
            next(it)
        return it

    def next(self) -> Any | None:
        """The next item, or None when this member's pass has ended."""
        if self._iter is None:
            self._iter = self._open()
        try:
            item = next(self._iter)
        except StopIteration:
            self._iter = None
            return None
        self._consumed += 1
        return item


class IterableDatasetMixture(IterableDataset):
    """Members interleaved as they are read; a pass ends by ``mixture_strategy``; resumable.

    Like Hugging Face's streamed interleave, each member keeps one item read ahead, so a
    member counts as exhausted right after its last item (not at its next draw): one pass
    gives the order :class:`MapDatasetMixture` gives over the same rows. The state is the
    number of draws, which members ran out, and each member's position before its
    read-ahead item, so a resumed pass goes on with the same items. Every pass starts all
    members over and draws the same sources (one pass is one epoch of the same data).
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        mixture_proportion: Sequence[float] | None = None,
        mixture_strategy: str = "first_exhausted",
        seed: int | None = 42,
        tokenizer: Any = None,
    ) -> None:
        self.datasets = list(datasets)
        self.proportions = check_mixture(len(self.datasets), mixture_proportion, mixture_strategy)
        self.mixture_strategy = mixture_strategy
        self.seed = seed
        self.pad_token_id = _member_pad_id(self.datasets, tokenizer)
        self.members = [_Member(d) for d in self.datasets]
        self._state = self._start_of_pass(0)

    def _start_of_pass(self, number: int) -> dict[str, Any]:
        return {"pass": number, "draws": 0, "exhausted": [False] * len(self.members),
                "members": [dict(m.initial) for m in self.members]}

    def state_dict(self) -> dict[str, Any]:
        """The pass, the draws taken, which members ran out, and where each member's next item is."""
        return {**self._state, "exhausted": list(self._state["exhausted"]),
                "members": [dict(p) for p in self._state["members"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = len(state.get("members", []))
        if saved != len(self.members):
            raise ValueError(f"dataset: the saved mixture state has {saved} members, this mixture {len(self.members)}")
        self._state = {**self._start_of_pass(0), **state}

    def _finished(self, exhausted: list[bool], draws: int) -> bool:
        if self.proportions is None and draws % len(self.members):
            return False  # round robin stops only between whole rounds, as the map-style mixture
        drawn = [e for i, e in enumerate(exhausted) if self.proportions is None or self.proportions[i] > 0]
        return any(drawn) if self.mixture_strategy == "first_exhausted" else all(drawn)

    def __iter__(self) -> Iterator[Any]:
        state = self.state_dict()
        members = self.members
        for member, position in zip(members, state["members"]):
            member.restore(position)
        draws = _SourceDraws(len(members), self.proportions, self.seed, start=state["draws"])
        ahead: list[Any] = [None] * len(members)
        where = [dict(p) for p in state["members"]]  # each member's position before its next (or read-ahead) item
        exhausted = list(state["exhausted"])
        while not self._finished(exhausted, draws.count):
            source = next(draws)
            member = members[source]
            item = ahead[source] if ahead[source] is not None else member.next()
            if item is None:
                raise ValueError(f"dataset.datasets.{source}: the member yields no items")
            where[source] = member.position()
            ahead[source] = member.next()  # read ahead: was that the member's last item?
            if ahead[source] is None:
                exhausted[source] = True
                member.restart()
                where[source] = member.position()
            self._state = {"pass": state["pass"], "draws": draws.count, "exhausted": list(exhausted),
                           "members": [dict(p) for p in where]}
            yield item
        for member in members:
            member.restore(member.initial)
        self._state = self._start_of_pass(state["pass"] + 1)


def make_dataset_mixture(
    datasets: Sequence[Any],
    mixture_proportion: Sequence[float] | None = None,
    mixture_strategy: str = "first_exhausted",
    seed: int | None = 42,
    tokenizer: Any = None,
) -> MapDatasetMixture | IterableDatasetMixture:
    """A mixture of the given datasets: map-style when every member is, streamed when any member is."""
    datasets = list(datasets)
    streamed = any(isinstance(d, IterableDataset) for d in datasets)
    cls = IterableDatasetMixture if streamed else MapDatasetMixture
    return cls(datasets, mixture_proportion=mixture_proportion, mixture_strategy=mixture_strategy, seed=seed,
               tokenizer=tokenizer)
