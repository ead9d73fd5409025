"""The ``dataset`` / ``validation_dataset``, ``packed_sequence`` and ``dataloader`` sections as a dataset and a
StatefulDataLoader.

Why here: turning sections into parts means resolving import paths (targets, ``collate_fn``, a row's
``prompt_func``) through the gate and choosing which arguments a target takes; the dataset,
mixture, packing and collater parts then get plain arguments only.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.length_grouped_sampler import LengthGroupedSampler, sample_lengths
from nemo_like.components.datasets.llm.context_limit import resolve_max_length
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence, pack_dataset
from nemo_like.components.datasets.utils import default_collater, packed_sequence_collater
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode, resolve_target

logger = logging.getLogger("nemo_like")

__all__ = ["build_dataloader", "build_dataset", "instantiate_dataset", "resolve_row_functions"]

ROW_FUNCTION_ROLES = ("prompt", "completion")  # a dataset's ``{role}_func`` may be an import path


def _packing_size(packing: dict[str, Any]) -> int:
    """``packed_sequence_size`` as a number (0 = off); a value that is not one is for ``pack_dataset`` to refuse."""
    try:
        return int(packing.get("packed_sequence_size") or 0)
    except (TypeError, ValueError):
        return 0


def build_dataset(section: ConfigNode, tokenizer: Any, max_length: int | None = None,
                  packing: Mapping[str, Any] | None = None) -> Any:
    """A ``dataset`` / ``validation_dataset`` section built with the tokenizer, packed as the
    ``packed_sequence`` section (``packing``) says when its ``packed_sequence_size`` > 0.

    ``max_length`` is the model's context in tokens (read it from the model's config with
    ``context_length_of``); every dataset that takes ``max_length`` and whose section does
    not set it gets it, so a row longer than the model can take is refused (or cut with
    ``truncation``) here, naming its row. Without it the tokenizer's ``model_max_length`` is
    used when it is a real limit. With packing the packs are held to the context instead:
    a ``packed_sequence_size`` over it is an error, and the rows are left to the packer's rules.
    """
    name = section.node_path or "dataset"
    packing = packing.to_dict() if isinstance(packing, ConfigNode) else dict(packing or {})
    size = _packing_size(packing)
    if size > 0:
        own = section.get("max_length") if isinstance(section, ConfigNode) else None
        context, origin = resolve_max_length(own if own is not None else max_length, tokenizer)
        if context is not None and size > context:
            origin = f"{name}.max_length" if own is not None else origin
            raise ConfigError(f"packed_sequence.packed_sequence_size: {size} exceeds the model's context of "
                              f"{context} tokens ({origin}); use a packed_sequence_size of at most {context}")
    defaults = {"max_length": 0 if size > 0 else max_length}  # packed rows are held to the pack size instead
    dataset = instantiate_dataset(section, defaults, tokenizer=tokenizer)  # a mixture's members get the tokenizer too
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


def build_dataloader(section: ConfigNode | None, dataset: Any, batch_size: int, train: bool, *, tokenizer: Any,
                     dist: Any, seed: int, ranked: bool, name: str | None = None, processor: Any = None,
                     default_collate: Any = None) -> Any:
    """A ``dataloader`` / ``validation_dataloader`` section (None: a plain StatefulDataLoader) over
    ``dataset``: the collater that fits the data, a distributed sampler over data-parallel ranks,
    ``group_by_length``. ``name`` is the section's key for messages (default: where ``section`` sits).
    ``processor``: given to a collater that takes one (image-text data); ``default_collate``: the collater
    when the section names none (else ``default_collater``)."""
    name = name or (section.node_path if section is not None else "") or ("dataloader" if train
                                                                           else "validation_dataloader")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"step_scheduler.local_batch_size: expected a positive integer, got {batch_size!r}")
    node = section if section is not None else ConfigNode(
        {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"}
    )
    collate = resolve_collate_fn(node.get("collate_fn", None), f"{name}.collate_fn") or default_collate or default_collater
    if isinstance(dataset, PackedSequence) and _function_of(collate) is default_collater:
        # packs need the block-diagonal mask, not a padding mask; the node's own arguments stay
        collate = partial(packed_sequence_collater, **collate.keywords) if isinstance(collate, partial) \
            else packed_sequence_collater
    if _function_of(collate) is packed_sequence_collater and not isinstance(dataset, PackedSequence):
        raise ConfigError(f"{name}.collate_fn: packed_sequence_collater needs packed data; "
                          "add packed_sequence.packed_sequence_size (> 0) or use default_collater")
    pad_id = getattr(dataset, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    takes = inspect.signature(collate).parameters
    if "pad_token_id" in takes and pad_id is not None:
        collate = partial(collate, pad_token_id=pad_id)
    if "processor" in takes and processor is not None and "processor" not in getattr(collate, "keywords", {}):
        collate = partial(collate, processor=processor)
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
            kwargs["sampler"] = LengthGroupedSampler(sample_lengths(dataset), batch_size, seed=seed)
            kwargs["shuffle"] = False
    if "group_by_length" in node:  # ours, not a StatefulDataLoader argument
        node = ConfigNode({k: v for k, v in node.to_dict().items() if k != "group_by_length"}, path=name)
    if not train:
        kwargs["shuffle"] = False
    return node.instantiate(**{k: v for k, v in kwargs.items() if v is not None})


def _function_of(collate: Any) -> Any:
    """The function a collater is (through ``functools.partial``)."""
    while isinstance(collate, partial):
        collate = collate.func
    return collate


def resolve_collate_fn(value: Any, key: str) -> Any:
    """A ``collate_fn`` value as a callable: an import path, or a node (``_target_`` plus keyword arguments,
    e.g. ``pad_seq_len_divisible: 64``) as a ``functools.partial`` of its target; None stays None.

    Both go through the import gate; the node's arguments are checked like any target's and
    must be arguments the function takes.
    """
    if value is None or callable(value) and not isinstance(value, (str, ConfigNode)):
        return value
    if isinstance(value, str):
        fn = resolve_target(value, key=key)
        if not callable(fn):
            raise ConfigError(f"{key}: {value!r} is not callable")
        return fn
    if not isinstance(value, ConfigNode):
        raise ConfigError(f"{key}: expected an import path or a node with _target_, got {type(value).__name__}")
    if "_target_" not in value:
        raise ConfigError(f"{key}: a collate_fn node needs a _target_ (keys: {', '.join(map(str, value)) or 'none'})")
    raw = value["_target_"]
    fn = resolve_target(raw, key=f"{key}._target_")
    if not callable(fn):
        raise ConfigError(f"{key}._target_: {raw!r} is not callable")
    kwargs = {k: (v.to_dict() if isinstance(v, ConfigNode) else v) for k, v in value.items() if k != "_target_"}
    from nemo_like.config.target_gate import check_call_arguments

    check_call_arguments(fn, kwargs, f"{key}._target_", raw if isinstance(raw, str) else None)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for arg in kwargs:
            if arg not in params or arg == next(iter(params)):
                raise ConfigError(f"{key}.{arg}: not an argument of {raw} (it takes "
                                  f"{', '.join(list(params)[1:]) or 'only the batch'})")
    return partial(fn, **kwargs)


def _takes(target: Any, name: str) -> bool:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def resolve_row_functions(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``prompt_func`` / ``completion_func`` import paths of a dataset section, resolved through the gate.

    A path written next to its ``{role}_template`` is left as it is: the dataset refuses the pair by name.
    A function in a user's file (``path/to/file.py:fn``) needs ``NEMO_LIKE_ENABLE_USER_MODULES=1``.
    """
    resolved: dict[str, Any] = {}
    for role in ROW_FUNCTION_ROLES:
        key = f"{role}_func"
        path = section.get(key)
        if not isinstance(path, str) or section.get(f"{role}_template") is not None:
            continue
        try:
            func = resolve_target(path, key=f"dataset.{key}")
        except ConfigError as e:
            raise DatasetError(str(e)) from None
        if not callable(func):
            raise DatasetError(f"dataset.{key}: {path!r} is not callable")
        resolved[key] = func
    return resolved


def instantiate_dataset(node: ConfigNode, defaults: dict[str, Any] | None = None, **runtime: Any) -> Any:
    """Build a ``dataset:`` section; datasets nested in it (a mixture's members) get the runtime arguments too.

    ``defaults`` are arguments the YAML may override (the model's context ``max_length``):
    each goes to a dataset that takes it and does not set it. A member may carry
    ``mixture_proportion`` next to its own keys; it is taken off the member and handed to
    the mixture as the list of proportions, in member order.
    """
    defaults = dict(defaults or {})
    members = node.get("datasets")
    if not (isinstance(members, list) and members and all(isinstance(m, ConfigNode) and "_target_" in m
                                                          for m in members)):
        extra: dict[str, Any] = {}
        if defaults and "_target_" in node:
            target = resolve_target(node["_target_"], f"{node.node_path or 'dataset'}._target_")
            extra = {k: v for k, v in defaults.items() if k not in node and k not in runtime and _takes(target, k)}
        extra.update({k: v for k, v in resolve_row_functions(node).items() if k not in runtime})
        if "_target_" in node:  # runtime parts (the tokenizer) go to a dataset that takes them
            target = resolve_target(node["_target_"], f"{node.node_path or 'dataset'}._target_")
            runtime = {k: v for k, v in runtime.items() if _takes(target, k)}
        return node.instantiate(**runtime, **extra)
    built, proportions = [], []
    for member in members:
        proportions.append(member.get("mixture_proportion"))
        keys = {k: v for k, v in member.items() if k != "mixture_proportion"}
        plain = ConfigNode(keys, path=member.node_path)
        target = resolve_target(plain["_target_"], f"{member.node_path}._target_")
        built.append(instantiate_dataset(plain, defaults, **{k: v for k, v in runtime.items() if _takes(target, k)}))
    extra = {"datasets": built}
    where = node.node_path or "dataset"
    if any(p is not None for p in proportions):
        if node.get("mixture_proportion") is not None:
            raise ConfigError(f"{where}.mixture_proportion: given both as a list and on the datasets; use one")
        missing = [i for i, p in enumerate(proportions) if p is None]
        if missing:
            raise ConfigError(f"{where}.datasets.{missing[0]}.mixture_proportion: missing; when one member "
                              "has a proportion, every member needs one")
        extra["mixture_proportion"] = proportions
    return node.instantiate(**runtime, **extra)
