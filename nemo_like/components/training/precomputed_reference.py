"""Reference log-probabilities computed once, before training, and kept with the run.

Why: a DPO reference model is only ever read, so its log-probabilities of each pair can be
computed in one pass and looked up afterwards: no reference forward per step (a third less
compute per step), and no second model in memory. They belong to the run's state: a resumed
run reads them from its checkpoint instead of recomputing them with a policy that has moved.
Pairs are addressed by their index in the dataset, which ``IndexedPairs`` adds to each item and
``collate_with_pair_index`` carries into the batch as ``pair_index``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


class IndexedPairs(torch.utils.data.Dataset):
    """``dataset`` whose items also carry ``pair_index`` (their position in it)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "pair_index": index}

    def __getattr__(self, name: str) -> Any:  # pad_token_id, lengths and the like come from the dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_with_pair_index(collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
                            ) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """``collate`` that also returns the items' ``pair_index`` as a tensor (the items reach it without)."""

    def collate_indexed(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate([{k: v for k, v in item.items() if k != "pair_index"} for item in items])
        batch["pair_index"] = torch.tensor([item["pair_index"] for item in items], dtype=torch.long)
        return batch

    return collate_indexed


class PrecomputedReference:
    """Per-pair reference log-probabilities of the chosen and rejected completions (float64)."""

    def __init__(self, num_pairs: int) -> None:
        self.chosen = torch.zeros(num_pairs, dtype=torch.float64)
        self.rejected = torch.zeros(num_pairs, dtype=torch.float64)
        self.complete = False

    def lookup(self, pair_index: torch.Tensor, dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.chosen[pair_index].to(device=device, dtype=dtype),
                self.rejected[pair_index].to(device=device, dtype=dtype))

    def fill(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Store ``(pair_index, chosen, rejected)`` batches; each rank fills its share, the sum joins them."""
        chosen, rejected = torch.zeros_like(self.chosen), torch.zeros_like(self.rejected)
        seen = torch.zeros_like(self.chosen)
        for index, c, r in batches:
            index = index.cpu()
            chosen[index], rejected[index], seen[index] = c.double().cpu(), r.double().cpu(), 1.0
        joined = all_reduce_sum(torch.stack([chosen * seen, rejected * seen, seen]))
        counts = joined[2].clamp(min=1)
        self.chosen, self.rejected = joined[0] / counts, joined[1] / counts
        missing = int((joined[2] == 0).sum())
        if missing:
            raise RuntimeError(f"precomputed reference: {missing} pair(s) received no log-probabilities")
        self.complete = True

    def state_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "rejected": self.rejected, "complete": self.complete}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["chosen"].shape != self.chosen.shape:
            raise ValueError(f"precomputed reference: the checkpoint holds {state['chosen'].numel()} pairs, "
                             f"the dataset {self.chosen.numel()}")
        self.chosen, self.rejected = state["chosen"].double(), state["rejected"].double()
        self.complete = bool(state["complete"])


def shard_indices(num_items: int, rank: int, world_size: int, batch_size: int) -> list[Sequence[int]]:
    """This rank's batches of item indices for the precomputing pass: every rank gets the same number of
    batches (a sharded model's forwards are collective), the last ones repeating an index when short."""
    mine = list(range(rank, num_items, world_size))
    per_rank = -(-num_items // world_size)
    mine += mine[-1:] * (per_rank - len(mine)) if mine else [0] * per_rank
    return [mine[i: i + batch_size] for i in range(0, per_rank, batch_size)]
