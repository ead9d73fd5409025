"""Does a checkpoint fit this model and optimizer? Names and shapes compared before anything is copied.

Only headers are read here (safetensors headers, DCP metadata through the safe unpickler,
a memory-mapped ``torch.load(weights_only=True)``), so a checkpoint of another model is
refused in one line with the live model and optimizer untouched.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nemo_like.components.checkpoint import dcp
from nemo_like.components.checkpoint.errors import FRESH_HINT, CheckpointError
from nemo_like.components.checkpoint.model_state import ModelState, adapter_file


def torch_load(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def unique_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors listed once (safetensors refuses shared storage); no copies."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


def _describe_mismatch(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint (e.g. {missing[:2]})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in this model (e.g. {unexpected[:2]})")
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})")
    return "; ".join(parts)


def check_model(path: str, part: ModelState) -> Any:
    """Compare the saved tensors' names and shapes with the model; returns the loader to run once all checks pass."""
    model = part.model
    model_dir = os.path.join(path, "model")
    if dcp.is_sharded_checkpoint(model_dir):  # written by several ranks: any layout reads it
        trainable_only = part.adapter_only
        saved = dcp.saved_shapes(model_dir)
        _refuse_if_different(path, saved, dcp.expected_model_shapes(model, trainable_only))
        return lambda: dcp.load_model_shards(model, model_dir, trainable_only)
    adapter = adapter_file(model_dir)
    full = [f for f in (os.path.join(model_dir, "model.safetensors"), os.path.join(model_dir, "model.pt"))
            if os.path.isfile(f)]
    if part.adapter_only:
        if not os.path.isfile(adapter):
            raise CheckpointError(
                f"checkpoint.restore_from: {path} holds {'full model weights' if full else 'no model'}, "
                f"but this run trains a LoRA adapter; {FRESH_HINT}"
            )
        if dcp.has_sharded_parameters(model):
            raise CheckpointError(f"checkpoint.restore_from: {path} holds a single-process LoRA adapter, which a "
                                  f"sharded run cannot resume; resume it with one process, or {FRESH_HINT}")
        return _check_adapter(path, part.adapter_loader(model_dir))
    if not full:
        what = "a LoRA adapter" if os.path.isfile(adapter) else "no model weights"
        raise CheckpointError(
            f"checkpoint.restore_from: {path} holds {what}, but this run fine-tunes the full model; {FRESH_HINT}"
        )
    file = full[0]
    if file.endswith(".safetensors"):
        with safe_open(file, framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    else:
        loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        saved = {k: tuple(v.shape) for k, v in loaded.items()}
    expected = (dcp.unique_shapes(model) if dcp.has_sharded_parameters(model)
                else {k: tuple(t.shape) for k, t in unique_entries(model).items()})
    _refuse_if_different(path, saved, expected)

    def apply() -> None:
        state = load_file(file) if file.endswith(".safetensors") else torch_load(file)
        if dcp.has_sharded_parameters(model):  # a single-process checkpoint into a sharded run
            dcp.load_full_model_state(model, state)
            return
        with torch.no_grad():
            live = model.state_dict(keep_vars=True)
            for key, tensor in state.items():
                live[key].copy_(tensor)

    return apply


def _check_adapter(path: str, load_adapter: Any) -> Any:
    def apply() -> None:
        try:
            load_adapter()
        except ValueError as e:  # it checks every tensor before copying any
            raise CheckpointError(
                f"checkpoint.restore_from: {path} was written for another model: {e}; {FRESH_HINT}"
            ) from None

    return apply


def _refuse_if_different(path: str, saved: dict[str, tuple], expected: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    mismatched = [f"{k}: checkpoint {list(saved[k])} vs model {list(v)}" for k, v in expected.items()
                  if k in saved and saved[k] != v]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint.restore_from: {path} was written for another model "
            f"({_describe_mismatch(missing, unexpected, mismatched)}); {FRESH_HINT}"
        )


def check_optimizer(path: str, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer must cover the same parameters, group by group, with state of their shapes."""
    groups = [g["params"] for g in saved.get("param_groups", [])]
    live = [g["params"] for g in optimizer.param_groups]
    if [len(g) for g in groups] != [len(g) for g in live]:
        raise CheckpointError(
            f"checkpoint.restore_from: {path} was written for another model: its optimizer state covers parameter "
            f"groups of sizes {[len(g) for g in groups]}, this run trains {[len(g) for g in live]}; {FRESH_HINT}"
        )
    params = dict(zip((i for g in groups for i in g), (p for g in live for p in g)))
    for index, state in saved.get("state", {}).items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(
                    f"checkpoint.restore_from: {path} was written for another model: its optimizer state '{name}' "
                    f"has shape {list(value.shape)} for a parameter of shape {list(params[index].shape)}; {FRESH_HINT}"
                )


# Where each part's state goes in a step directory; any other part ``name`` is ``name.pt``.
STATE_FILES = {
    "optim": ("optim", "optimizer.pt"),
    "lr_scheduler": ("optim", "lr_scheduler.pt"),
    "step_scheduler": ("step_scheduler.pt",),
    "dataloader": ("dataloader", "dataloader.pt"),
    "rng": ("rng", "rng.pt"),
}


def state_file(name: str) -> tuple[str, ...]:
    """The path of part ``name``'s state inside a step directory."""
    return STATE_FILES.get(name, (f"{name}.pt",))


def read_states(path: str, parts: dict[str, Any]) -> dict[str, Any]:
    """The state files of every part but the model, read (weights-only) but not applied yet."""
    optim_shards = parts.get("optim") is not None and dcp.is_sharded_checkpoint(os.path.join(path, "optim"))
    own_rng = dcp.rng_file(os.path.join(path, "rng"))  # rank > 0: its own stream, if the saved run had it
    states: dict[str, Any] = {}
    for key, part in parts.items():
        if key == "model" or part is None or (key == "optim" and optim_shards) or (key == "rng" and own_rng is None):
            continue
        where = ("rng", os.path.basename(own_rng)) if key == "rng" else state_file(key)
        file = os.path.join(path, *where)
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint.restore_from: {path} is incomplete (no {os.path.join(*where)})")
        states[key] = torch_load(file)
    return states
