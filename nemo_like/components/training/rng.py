"""Seeding and RNG state that survives a checkpoint round trip."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _numpy_state_to_tensors(state: tuple) -> tuple:
    """Numpy's state holds an ndarray; a tensor keeps it loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_tensors(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


class StatefulRNG:
    """Seeds python, numpy and torch (CPU and CUDA) once, and saves/restores their states.

    ``ranked=True`` offsets the seed by the process rank so data-parallel ranks draw
    different dropout masks while the run as a whole stays reproducible.
    """

    def __init__(self, seed: int = 42, ranked: bool = False) -> None:
        self.seed = int(seed) + (_rank() if ranked else 0)
        self.ranked = ranked
        random.seed(self.seed)
        np.random.seed(self.seed % (2**32))
        torch.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "seed": self.seed,
            "python": random.getstate(),
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
