"""A data loader view whose saved state resumes at the next optimizer step, not one batch later.

Kept apart from the step scheduler on purpose: the scheduler reads one micro-batch
ahead to see where an epoch ends. Should it stop doing so, this view (which assumes
that read-ahead) must go too; the exact-resume tests fail loudly if the two disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("nemo_like")


class StepAlignedLoader:
    """A StatefulDataLoader whose ``state_dict()`` resumes exactly at the next optimizer step.

    The step scheduler reads one micro-batch ahead to see where an epoch ends, so when
    a step's checkpoint is written the loader has already handed out the first batch
    of the following step (or hit the epoch's end). Its own state would then skip that
    batch on resume; the state from just before the latest fetch is the one that
    continues the run. Everything else is passed through to the wrapped loader.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.stateful = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
        self._before_last_fetch: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __iter__(self) -> Iterator[Any]:
        if not self.stateful:
            yield from self.loader
            return
        iterator = iter(self.loader)
        while True:
            self._before_last_fetch = self.loader.state_dict()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if not self.stateful:
            return {}
        if self._before_last_fetch is None:
            return self.loader.state_dict()
        return self._before_last_fetch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load, then build the resumed iterator now: building one draws a seed from torch's global
        RNG, which must happen before the RNG state itself is restored, as it did in the original run."""
        if not self.stateful or not state:
            logger.warning("the dataloader keeps no state (use torchdata's StatefulDataLoader); "
                           "the resumed run starts its data from the beginning of an epoch")
            return
        self.loader.load_state_dict(state)
        self.loader.state_dict()
        self._before_last_fetch = None
