"""The batch contract between data, model and method.

A batch is a dict of tensors. Every key must have a consumer: the model (the inputs its
``forward`` names, or an explicit ``batch_keys`` attribute), or the method itself (``labels``,
``loss_mask``, DPO's chosen/rejected fields). A key nobody reads is an error, not dropped: a
dataset emitting ``pixel_values`` to a text-only model would otherwise train on text alone
and nothing would say so. Labels mark positions without loss with ``IGNORE_INDEX``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.config.errors import ConfigError

IGNORE_INDEX = -100  # label of a position that carries no loss (prompt, padding, document boundary)

# Wrappers whose forward is (*args, **kwargs) around the real module.
_WRAPPED = ("_orig_mod", "module", "_checkpoint_wrapped_module")


def ignore_index_of(loss_fn: Any) -> int:
    """The label value the loss skips (its ``ignore_index``), which must be the one the datasets write."""
    value = int(getattr(loss_fn, "ignore_index", IGNORE_INDEX))
    if value != IGNORE_INDEX:
        raise ConfigError(f"loss_fn.ignore_index: {value}, but the datasets mark positions without loss with "
                          f"{IGNORE_INDEX}; leave it unset")
    return value


def model_batch_keys(model: torch.nn.Module) -> frozenset[str] | None:
    """The batch keys ``model`` consumes: its ``batch_keys`` attribute when it declares one, else the
    named parameters of its ``forward`` (``labels`` excluded: the method computes the loss). None
    when the forward names nothing (only ``*args``/``**kwargs``): then every key is passed on."""
    declared = getattr(model, "batch_keys", None)
    if declared is not None:
        return frozenset(declared)
    inner = model
    while not _names(inner):  # a wrapper's (*args, **kwargs): ask the module it wraps
        nested = next((getattr(inner, n) for n in _WRAPPED
                       if isinstance(getattr(inner, n, None), torch.nn.Module)), None)
        if nested is None:
            break
        inner = nested
    names = _names(inner)
    return frozenset(names - {"labels"}) if names else None


def _names(module: torch.nn.Module) -> set[str]:
    params = inspect.signature(module.forward).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def split_batch(
    batch: Mapping[str, Any], model_keys: frozenset[str] | None, method_keys: Iterable[str], model_name: str = "model"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model inputs, the method's fields)``; a key that neither takes is a ``DatasetError`` naming it."""
    own = set(method_keys)
    unknown = sorted(k for k in batch if k not in own and model_keys is not None and k not in model_keys)
    if unknown:
        takes = ", ".join(sorted(model_keys or ())) or "nothing"
        raise DatasetError(
            f"batch key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}: no consumer; "
            f"{model_name} takes {takes} and the method reads {', '.join(sorted(own))}. Drop the field from "
            "the dataset's items (or collater), or use a model that takes it"
        )
    inputs = {k: v for k, v in batch.items() if k not in own}
    return inputs, {k: v for k, v in batch.items() if k in own}
