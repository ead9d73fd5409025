"""The ``dataset`` / ``dataloader`` sections of a recipe turned into a dataset and a StatefulDataLoader."""

from __future__ import annotations

import inspect
import logging
from functools import partial
from typing import Any

import torch

from nemo_like.components.datasets.llm.context_limit import context_length_of, resolve_max_length
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence, pack_dataset
from nemo_like.components.datasets.utils import default_collater, packed_sequence_collater
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode, resolve_target

logger = logging.getLogger("nemo_like")

__all__ = ["build_dataloader", "build_dataset", "context_length_of"]


def _plain(node: Any) -> dict[str, Any]:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node or {})


def _packing_size(packing: dict[str, Any]) -> int:
    """``packed_sequence_size`` as a number (0 = off); a value that is not one is for ``pack_dataset`` to refuse."""
    try:
        return int(packing.get("packed_sequence_size") or 0)
    except (TypeError, ValueError):
        return 0


def build_dataset(cfg: ConfigNode, name: str, tokenizer: Any, max_length: int | None = None) -> Any:
    """The ``name`` section (``dataset``, ``validation_dataset``) built with the tokenizer, packed when
    ``packed_sequence.packed_sequence_size`` > 0.

    ``max_length`` is the model's context in tokens (read it from the model's config with
    :func:`context_length_of`); every dataset that takes ``max_length`` and whose section does
    not set it gets it, so a row longer than the model can take is refused (or cut with
    ``truncation``) here, naming its row. Without it the tokenizer's ``model_max_length`` is
    used when it is a real limit. With packing the packs are held to the context instead:
    a ``packed_sequence_size`` over it is an error, and the rows are left to the packer's rules.
    """
    from nemo_like.components.datasets.mixture import instantiate_dataset

    node = cfg.get(name)
    packing = _plain(cfg.get("packed_sequence") if "packed_sequence" in cfg else None)
    size = _packing_size(packing)
    if size > 0:
        own = node.get("max_length") if isinstance(node, ConfigNode) else None
        context, origin = resolve_max_length(own if own is not None else max_length, tokenizer)
        if context is not None and size > context:
            origin = f"{name}.max_length" if own is not None else origin
            raise ConfigError(f"packed_sequence.packed_sequence_size: {size} exceeds the model's context of "
                              f"{context} tokens ({origin}); use a packed_sequence_size of at most {context}")
    defaults = {"max_length": 0 if size > 0 else max_length}  # packed rows are held to the pack size instead
    dataset = instantiate_dataset(node, defaults, tokenizer=tokenizer)  # a mixture's members get the tokenizer too
    if packing and isinstance(dataset, torch.utils.data.IterableDataset) and packing.get("packed_sequence_size"):
        raise ConfigError(f"packed_sequence.packed_sequence_size: packing needs a map-style {name}, and "
                          f"{type(dataset).__name__} is streamed; use its map-style variant or turn packing off")
    if packing:
        # Packing is a property of the run, not of the data: the same documents, fewer and fuller rows.
        if packing.get("pad_token_id") is None:
            pad_id = getattr(dataset, "pad_token_id", None)
            packing["pad_token_id"] = tokenizer.pad_token_id if pad_id is None else pad_id
        dataset = pack_dataset(dataset, **packing)
    return dataset


def build_dataloader(cfg: ConfigNode, name: str, dataset: Any, batch_size: int, train: bool, *, tokenizer: Any,
                     dist: Any, seed: int, ranked: bool) -> Any:
    """The ``name`` section (``dataloader``, ``validation_dataloader``) over ``dataset``: the collater
    that fits the data, a distributed sampler over data-parallel ranks, ``group_by_length``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"step_scheduler.local_batch_size: expected a positive integer, got {batch_size!r}")
    node = cfg.get(name) if name in cfg else ConfigNode(
        {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"}
    )
    collate = node.get("collate_fn", None)
    collate = resolve_target(collate, key=f"{name}.collate_fn") if isinstance(collate, str) else collate
    collate = collate or default_collater
    if isinstance(dataset, PackedSequence) and collate is default_collater:
        collate = packed_sequence_collater  # packs need the block-diagonal mask, not a padding mask
    if collate is packed_sequence_collater and not isinstance(dataset, PackedSequence):
        raise ConfigError(f"{name}.collate_fn: packed_sequence_collater needs packed data; "
                          "add packed_sequence.packed_sequence_size (> 0) or use default_collater")
    pad_id = getattr(dataset, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    if "pad_token_id" in inspect.signature(collate).parameters and pad_id is not None:
        collate = partial(collate, pad_token_id=pad_id)
    kwargs: dict[str, Any] = {"dataset": dataset, "batch_size": batch_size, "collate_fn": collate}
    if isinstance(dataset, torch.utils.data.IterableDataset):
        # A stream orders (and shards over ranks) itself; a sampler or shuffle does not apply.
        kwargs["shuffle"] = False
        if getattr(dataset, "repeat_on_exhaustion", False):
            dataset.repeat_on_exhaustion = False  # the loop repeats the data: one pass is one epoch
    elif dist.world_size > 1:
        from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

        shuffle = bool(node.get("shuffle", False)) and train
        # One sample order for all ranks (a ranked RNG's seed differs per rank); tensor- and
        # context-parallel peers share a data-parallel rank, so they read the same samples.
        seed = seed - (dist.rank if ranked else 0)
        kwargs["sampler"] = StatefulDistributedSampler(
            dataset, num_replicas=dist.dp_size, rank=dist.dp_rank, shuffle=shuffle, seed=seed
        )
        kwargs["shuffle"] = False  # the sampler shuffles; the loader refuses a sampler together with shuffle
    if node.get("group_by_length", False) and train:
        if "sampler" in kwargs or isinstance(dataset, (PackedSequence, torch.utils.data.IterableDataset)):
            logger.warning("%s.group_by_length: not applied to packed, streamed or multi-rank data", name)
        else:
            from nemo_like.components.datasets.length_grouped_sampler import LengthGroupedSampler, sample_lengths

            kwargs["sampler"] = LengthGroupedSampler(sample_lengths(dataset), batch_size, seed=seed)
            kwargs["shuffle"] = False
    if "group_by_length" in node:  # ours, not a StatefulDataLoader argument
        node = ConfigNode({k: v for k, v in node.to_dict().items() if k != "group_by_length"}, path=name)
    if not train:
        kwargs["shuffle"] = False
    loader = node.instantiate(**{k: v for k, v in kwargs.items() if v is not None})
    return loader
