"""One state dict written with torch.save, in a way that a full disk can be told apart from a bug."""

from __future__ import annotations

from typing import Any

import torch


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` through a Python file, so a full disk surfaces as ENOSPC rather than 'unexpected pos'."""
    with open(path, "wb") as f:
        torch.save(obj, f)
