"""The ``dataset`` / ``dataloader`` sections of a recipe turned into a dataset and a StatefulDataLoader."""

from __future__ import annotations

import inspect
import logging
from functools import partial
from typing import Any

import torch

from nemo_like.components.datasets.llm.packed_sequence import PackedSequence, pack_dataset
from nemo_like.components.datasets.utils import default_collater, packed_sequence_collater
from nemo_like.config.loader import ConfigError, ConfigNode, resolve_target

logger = logging.getLogger("nemo_like")


def _plain(node: Any) -> dict[str, Any]:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node or {})


def build_dataset(cfg: ConfigNode, name: str, tokenizer: Any) -> Any:
    """The ``name`` section (``dataset``, ``validation_dataset``) built with the tokenizer, packed when
    ``packed_sequence.packed_sequence_size`` > 0."""
    from nemo_like.components.datasets.mixture import instantiate_dataset

    node = cfg.get(name)
    dataset = instantiate_dataset(node, tokenizer=tokenizer)  # a mixture's members get the tokenizer too
    packing = _plain(cfg.get("packed_sequence") if "packed_sequence" in cfg else None)
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
        kwargs["shuffle"] = None
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
