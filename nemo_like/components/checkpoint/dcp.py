"""Sharded model and optimizer state with ``torch.distributed.checkpoint`` (DCP), for runs of several ranks.

Under FSDP2 / tensor parallel no rank holds the whole model, so every rank writes its
own shards (``model/`` and ``optim/`` hold ``.metadata`` plus ``__R_0.distcp`` files).
DCP records each tensor's global shape and where each piece sits, so a checkpoint
written by N ranks loads into any other layout: 1 process, N ranks, or another
dp x tp split. The consolidated Hugging Face directory (``model/consolidated/``) is
written once, by rank 0, from a full copy gathered shard by shard.

The data position moves with the layout too: a run of ``dp`` ranks consumed
``dp x`` the samples its rank-0 loader reports, which is rescaled for the new ``dp``.

Loading never unpickles arbitrary objects: DCP's stock reader opens ``.metadata`` with
plain ``pickle`` and non-tensor values with ``torch.load(weights_only=False)``; here the
metadata goes through an unpickler that knows only DCP's metadata classes, and values
through ``torch.load(weights_only=True)``, as everywhere else in the checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nemo_like.components.checkpoint.errors import CheckpointError
from nemo_like.components.checkpoint.torch_file import save_torch

logger = logging.getLogger("nemo_like")

METADATA = ".metadata"
LAYOUT_FILE = "layout.json"


# ---------------------------------------------------------------------- where we are
def distributed_run() -> bool:
    """True when this process is one of several ranks (every rank must then take part in a save)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _initialized() else 0


def barrier() -> None:
    if distributed_run():
        dist.barrier()


def _all_ranks(value: int, op: Any) -> int:
    if not distributed_run():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def all_ranks_min(value: int) -> int:
    """The smallest ``value`` over the ranks, so that every rank takes the same decision; collective."""
    return _all_ranks(value, dist.ReduceOp.MIN)


def all_ranks_max(value: int) -> int:
    return _all_ranks(value, dist.ReduceOp.MAX)


def is_sharded_checkpoint(directory: str) -> bool:
    """A DCP directory (model/ or optim/ of a multi-rank save)."""
    return os.path.isfile(os.path.join(directory, METADATA))


def has_sharded_parameters(model: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


# ---------------------------------------------------------------------- save
def save_model_shards(model: nn.Module, directory: str, trainable_only: bool = False) -> None:
    """Every rank writes its shards of the model (only trainable tensors for adapters); collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(ignore_frozen_params=trainable_only))
    dcp.save(state, checkpoint_id=directory)


def save_optimizer_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str) -> None:
    """Every rank writes its shards of the optimizer state, keyed by parameter name; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=directory)


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model as plain CPU tensors on rank 0 (empty elsewhere); collective, one tensor at a time."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # Gathering a dp x tp weight takes two all-gathers, which torch reports once per tensor as a
    # performance hint; for a once-per-checkpoint gather that is noise.
    hints = logging.getLogger("torch.distributed.tensor._redistribute")
    level = hints.level
    hints.setLevel(logging.ERROR)
    try:
        return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))
    finally:
        hints.setLevel(level)


def _unwrapped_class(model: nn.Module) -> type:
    """The model's own class: FSDP2 swaps in a subclass (``FSDPLlamaForCausalLM``) that must not be rebuilt."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def plain_copy(model: nn.Module, state: dict[str, torch.Tensor], add_adapters: Any = None) -> nn.Module:
    """An unsharded CPU model holding ``state``, for the single-process writers (safetensors, PEFT, merge).

    Built on the meta device (no memory, no random init), then given the gathered tensors;
    buffers that state dicts leave out (rotary frequencies) are copied from the live model.
    """
    import copy

    config = copy.deepcopy(model.config)
    config._attn_implementation = "sdpa"  # never write our context-parallel backend into config.json
    with torch.device("meta"):
        clone = _unwrapped_class(model)(config)
    if add_adapters is not None:  # the model part's way to give the copy its adapter layout
        add_adapters(clone)
    missing, unexpected = clone.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"consolidated save: gathered tensors the model does not have: {unexpected[:3]}")
    live_buffers = dict(model.named_buffers())
    for name, buf in list(clone.named_buffers()):
        if buf.is_meta and name in live_buffers:
            module_name, _, leaf = name.rpartition(".")
            owner = clone.get_submodule(module_name) if module_name else clone
            owner._buffers[leaf] = live_buffers[name].detach().to("cpu").clone()
    if getattr(config, "tie_word_embeddings", False) and hasattr(clone, "tie_weights"):
        clone.tie_weights()
    still_meta = [n for n, t in list(clone.named_parameters()) + list(clone.named_buffers()) if t.is_meta]
    if still_meta:
        raise RuntimeError(f"consolidated save: no value gathered for {still_meta[:3]}")
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone.eval()


def save_rank_rng(directory: str, rng: Any) -> None:
    """Ranks other than 0 keep their own RNG stream (a ranked seed differs per rank)."""
    r = rank()
    if r > 0 and rng is not None:
        os.makedirs(directory, exist_ok=True)
        save_torch(rng.state_dict(), os.path.join(directory, f"rng_rank{r}.pt"))


def rng_file(directory: str) -> str | None:
    """The RNG file this rank resumes from: its own, rank 0's for rank 0, none for a rank the saved run lacked."""
    r = rank()
    if r == 0:
        return os.path.join(directory, "rng.pt")
    own = os.path.join(directory, f"rng_rank{r}.pt")
    return own if os.path.isfile(own) else None


# ---------------------------------------------------------------------- safe reading
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "torch": {"Size"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds DCP metadata (names, shapes, dtypes, file offsets) and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not DCP metadata")


def _safe_reader(directory: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            name = METADATA if rank is None else f"__{rank}{METADATA}"
            with open(os.path.join(str(self.path), name), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(directory)


def _safe_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # Checked with the weights-only loader, then handed on in a form the stock planner reads.
            obj = torch.load(value, weights_only=True)
            checked = io.BytesIO()
            torch.save(obj, checked)
            checked.seek(0)
            super().load_bytes(read_item, checked)

    return SafePlanner()


# ---------------------------------------------------------------------- check and load
def _dcp_load(state: dict[str, Any], directory: str) -> None:
    """DCP load in place; one process without a process group is an ordinary case here, not worth a warning."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(state, storage_reader=_safe_reader(directory), planner=_safe_planner(), no_dist=not _initialized())


def saved_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor a DCP directory holds; unreadable or unsafe metadata is a one-line error."""
    try:
        metadata = _safe_reader(directory).read_metadata()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise CheckpointError(f"checkpoint.restore_from: {os.path.join(directory, METADATA)} cannot be read safely "
                          f"({err})") from None
    return {k: tuple(m.size) for k, m in metadata.state_dict_metadata.items() if hasattr(m, "size")}


def expected_model_shapes(model: nn.Module, trainable_only: bool = False) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(ignore_frozen_params=trainable_only))
    return {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}


def unique_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Global shape per name with tied tensors once, as a single-process save lists them (first name wins);
    sharded parameters cannot be told apart by storage, so identity decides."""
    names = set(model.state_dict().keys())
    out = {n: tuple(p.shape) for n, p in model.named_parameters() if n in names}
    out.update({n: tuple(b.shape) for n, b in model.named_buffers() if n in names})
    return out


def optimizer_shape_mismatches(directory: str, model: nn.Module) -> list[str]:
    """Optimizer tensors (``state.<param>.<name>``) whose saved shape is not the parameter's."""
    params = {k: tuple(v) for k, v in expected_model_shapes(model).items()}
    out = []
    for key, shape in saved_shapes(directory).items():
        if not key.startswith("state.") or len(shape) == 0:
            continue
        fqn = key[len("state."):].rsplit(".", 1)[0]
        if fqn not in params:
            out.append(f"'{key}' has no parameter '{fqn}' in this model")
        elif shape != params[fqn]:
            out.append(f"'{key}' has shape {list(shape)} for a parameter of shape {list(params[fqn])}")
    return out


def load_model_shards(model: nn.Module, directory: str, trainable_only: bool = False) -> None:
    """Read a DCP model directory into ``model`` (sharded or not, any rank count); collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    options = _options(ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    _dcp_load(state, directory)
    set_model_state_dict(model, state, options=_options(ignore_frozen_params=trainable_only, strict=not trainable_only))


def load_optimizer_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str) -> None:
    """Read a DCP optimizer directory into ``optimizer`` (state created first so DCP has targets); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)
    _dcp_load(state, directory)
    set_optimizer_state_dict(model, optimizer, state)
    optimizer.zero_grad(set_to_none=True)  # creating the state left zero gradients behind


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A single-process checkpoint's full tensors into a sharded model (each rank keeps its slice)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(full_state_dict=True, strict=False))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A single-process ``optimizer.state_dict()`` (keyed by position) into a sharded run (keyed by name)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    live = [p for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in saved["param_groups"] for i in g["params"]]
    by_index = {i: names[id(p)] for i, p in zip(saved_ids, live)}
    state = {by_index[i]: value for i, value in saved.get("state", {}).items()}
    groups = [dict(g, params=[by_index[i] for i in g["params"]]) for g in saved["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=_options(full_state_dict=True))


# ---------------------------------------------------------------------- data position
def _sampler(loader: Any) -> Any:
    inner = getattr(loader, "loader", loader)
    return getattr(inner, "sampler", None)


def loader_layout(loader: Any) -> dict[str, Any]:
    """How the live loader splits the data: ranks, and whether it uses a distributed sampler."""
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    sampler = _sampler(loader)
    if isinstance(sampler, StatefulDistributedSampler):
        return {"dp_size": int(sampler.num_replicas), "distributed_sampler": True, "shuffle": bool(sampler.shuffle)}
    shuffle = isinstance(sampler, torch.utils.data.RandomSampler)
    return {"dp_size": 1, "distributed_sampler": False, "shuffle": shuffle}


def save_loader_layout(directory: str, loader: Any) -> None:
    with open(os.path.join(directory, LAYOUT_FILE), "w", encoding="utf-8") as f:
        json.dump(loader_layout(loader), f)


def reshard_loader_state(state: dict[str, Any], directory: str, loader: Any) -> dict[str, Any]:
    """Rank 0's saved loader state, rewritten for the live loader's number of data-parallel ranks.

    A run of ``dp`` ranks with a distributed sampler consumed ``dp`` x the samples its rank-0
    state counts (the sampler deals sample ``i`` to rank ``i % dp``), so the position in the
    epoch carries over exactly between layouts; a shuffled order only does so between two
    distributed samplers (same seed, same permutation).
    """
    path = os.path.join(directory, LAYOUT_FILE)
    saved = {"dp_size": 1, "distributed_sampler": False, "shuffle": False}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved.update(json.load(f))
    live = loader_layout(loader)
    if not state or (saved["dp_size"], saved["distributed_sampler"]) == (live["dp_size"], live["distributed_sampler"]):
        return state
    if saved["shuffle"] or live["shuffle"]:
        if not (saved["distributed_sampler"] and live["distributed_sampler"]):
            logger.warning("resuming shuffled data with another sampler (%d -> %d data-parallel ranks): the position "
                           "in the epoch carries over, the sample order does not", saved["dp_size"], live["dp_size"])
    out = dict(state)
    it_state = state.get("_sampler_iter_state")
    if isinstance(it_state, dict) and "samples_yielded" in it_state:
        consumed = int(it_state["samples_yielded"]) * saved["dp_size"]
        if consumed % live["dp_size"]:
            logger.warning("the saved data position (%d samples) does not split over %d ranks; rounding down",
                           consumed, live["dp_size"])
        local = consumed // live["dp_size"]
        new_it: dict[str, Any] = {"samples_yielded": local}
        if live["distributed_sampler"]:
            new_it["sampler_state"] = {"yielded": local}
        out["_sampler_iter_state"] = new_it
    for key in ("_num_yielded", "_sampler_iter_yielded"):
        if isinstance(state.get(key), int):
            out[key] = state[key] * saved["dp_size"] // live["dp_size"]
    return out
