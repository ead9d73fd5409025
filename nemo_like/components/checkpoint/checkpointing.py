"""Step checkpoints in a fixed layout, written atomically, read back for an exact resume.

``checkpoint_dir/epoch_{E}_step_{S}/`` holds ``model/`` (safetensors, or an HF-PEFT
adapter for PEFT runs), ``model/consolidated/`` (a directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads as is), ``optim/``,
``step_scheduler.pt``, ``rng/``, ``dataloader/``, ``config.yaml`` and ``losses.json``.
``LATEST`` and ``LOWEST_VAL`` at the root name the newest and the best step directory.

With several ranks (FSDP2, tensor parallel, DDP) ``model/`` and ``optim/`` hold sharded
``torch.distributed.checkpoint`` files instead (see ``dcp.py``), which load into any
number of ranks, and every rank takes part in a save; ``model/consolidated/`` is still
one plain Hugging Face directory, written by rank 0.

A step is written under ``.tmp_<name>`` and renamed when complete; the pointers move
only after that, so a crash mid-save never leaves a half checkpoint behind a pointer,
and anything named ``.tmp_*`` is debris that the next start removes. Nothing is read
with pickle beyond ``torch.load(weights_only=True)``.

Test hooks (environment variables; they exist so that tests can crash a real process
at the worst moments, and do nothing when unset):

- ``NEMO_LIKE_TEST_KILL_AFTER_STEP=S``: SIGKILL this process as soon as the
  checkpoint of step ``S`` is complete (pointers moved, old ones pruned).
- ``NEMO_LIKE_TEST_STALL_SAVE=S``: while saving step ``S``, print a line starting
  with ``test hook: stalling`` to stderr after the model is written, then sleep forever.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nemo_like.config.loader import ConfigError

logger = logging.getLogger("nemo_like")

_TMP_PREFIX = ".tmp_"
_STEP_DIR = re.compile(r"^epoch_(\d+)_step_(\d+)$")
LATEST = "LATEST"
LOWEST_VAL = "LOWEST_VAL"
_FRESH_HINT = "use --checkpoint.restore_from none to start fresh, or another checkpoint.checkpoint_dir"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed here (missing, incomplete, or of another model); one line."""


@dataclass
class CheckpointingConfig:
    """The ``checkpoint`` section.

    ``restore_from``: ``LATEST`` (the default) continues from the ``LATEST`` pointer
    when there is one and starts fresh otherwise; ``none`` always starts fresh; a step
    directory name (``epoch_0_step_5``) or a path picks that checkpoint.
    ``max_recent_checkpoints`` keeps the newest N step directories (plus ``LOWEST_VAL``'s).
    """

    enabled: bool = True
    checkpoint_dir: str = "checkpoints/"
    model_save_format: str = "safetensors"
    save_consolidated: bool = True
    restore_from: str | None = LATEST
    max_recent_checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.model_save_format not in ("safetensors", "torch_save"):
            raise ValueError(
                f"checkpoint.model_save_format: {self.model_save_format!r} is not 'safetensors' or 'torch_save'"
            )
        n = self.max_recent_checkpoints
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"checkpoint.max_recent_checkpoints: must be a positive integer or none, got {n!r}")
        if isinstance(self.restore_from, str):
            word = self.restore_from.strip()
            self.restore_from = None if word.lower() in ("none", "null", "") else LATEST if word.upper() == LATEST else word


def _atomic_write_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), _TMP_PREFIX + os.path.basename(path))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unique_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors listed once (safetensors refuses shared storage); no copies."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


def _unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().contiguous().cpu() for name, t in _unique_entries(model).items()}


def _torch_load(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _describe_mismatch(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint (e.g. {missing[:2]})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in this model (e.g. {unexpected[:2]})")
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})")
    return "; ".join(parts)


def drop_records_after(path: str, step: int) -> int:
    """Remove JSONL records past ``step`` (a resumed run re-does those steps); returns how many went."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", -1) <= step
        except ValueError:  # a line torn by the kill
            return False

    kept = [line if line.endswith("\n") else line + "\n" for line in lines if keep(line)]
    if len(kept) != len(lines):
        _atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


class Checkpointer:
    """Writes and reads the training state of one step; only the main rank writes files."""

    def __init__(self, config: CheckpointingConfig, is_main: bool = True) -> None:
        self.config = config
        self.is_main = is_main
        self.root = os.path.abspath(os.path.expanduser(config.checkpoint_dir))

    # ------------------------------------------------------------------ naming and pointers
    @staticmethod
    def step_dir_name(epoch: int, step: int) -> str:
        return f"epoch_{epoch}_step_{step}"

    def step_dirs(self) -> list[str]:
        """Complete step directories under the root, oldest step first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _STEP_DIR.match(name)
            if match and os.path.isdir(os.path.join(self.root, name)):
                found.append((int(match.group(2)), int(match.group(1)), name))
        return [name for _, _, name in sorted(found)]

    def _pointer(self, name: str) -> str | None:
        path = os.path.join(self.root, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            target = f.read().strip()
        return target if os.path.isdir(os.path.join(self.root, target)) else None

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint: ``LATEST``'s target, else the highest step directory."""
        name = self._pointer(LATEST)
        if name is None:
            dirs = self.step_dirs()
            name = dirs[-1] if dirs else None
        return os.path.join(self.root, name) if name else None

    def lowest_val(self) -> str | None:
        name = self._pointer(LOWEST_VAL)
        return os.path.join(self.root, name) if name else None

    def discard_partial(self) -> list[str]:
        """Remove ``.tmp_*`` debris of saves that a crash interrupted; returns the names removed."""
        if not self.is_main or not os.path.isdir(self.root):
            return []
        removed = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith(_TMP_PREFIX):
                path = os.path.join(self.root, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                removed.append(name)
        if removed:
            logger.info("removed %s left by an interrupted save in %s", ", ".join(removed), self.root)
        return removed

    def resume_path(self) -> str | None:
        """The step directory this run continues from (``restore_from``), or None to start fresh."""
        self.discard_partial()
        choice = self.config.restore_from
        if choice is None:
            return None
        choice = str(choice)
        if choice == LATEST:
            return self.latest() if self.config.enabled else None
        for path in (os.path.join(self.root, choice), os.path.abspath(os.path.expanduser(choice))):
            if os.path.isdir(path):
                if os.path.basename(path).startswith(_TMP_PREFIX):
                    raise CheckpointError(f"checkpoint.restore_from: {path} is an unfinished save, not a checkpoint")
                return path
        available = self.step_dirs()
        raise CheckpointError(
            f"checkpoint.restore_from: {choice!r} is neither a step directory in {self.root} nor an existing path"
            f" (available: {available[-5:] or 'none'}; or use LATEST / none)"
        )

    # ------------------------------------------------------------------ save
    def save(
        self,
        epoch: int,
        step: int,
        model: torch.nn.Module,
        tokenizer: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        step_scheduler: Any = None,
        rng: Any = None,
        dataloader: Any = None,
        config: dict[str, Any] | None = None,
        losses: dict[str, Any] | None = None,
        peft_config: Any = None,
        base_model_name_or_path: str | None = None,
        val_loss: float | None = None,
    ) -> str | None:
        """Write one step directory, then move ``LATEST`` (and ``LOWEST_VAL``) and prune; returns its path.

        With several ranks every rank must call this: each writes its model and optimizer
        shards (see ``dcp``), and rank 0 writes the rest and completes the directory.
        """
        from nemo_like.components.checkpoint import dcp

        sharded = dcp.distributed_run()
        if not self.config.enabled or not (self.is_main or sharded):
            return None
        start = time.perf_counter()
        name = self.step_dir_name(epoch, step)
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, _TMP_PREFIX + name)
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(os.path.join(tmp, "model"), exist_ok=True)
        if sharded:
            model = self._save_shards(tmp, model, optimizer, rng, peft_config)
            if model is None:  # ranks other than 0 are done
                return None
        self._save_model(os.path.join(tmp, "model"), model, tokenizer, peft_config, base_model_name_or_path,
                         full_weights=not sharded)
        _stall_hook(step, tmp)
        if optimizer is not None:
            os.makedirs(os.path.join(tmp, "optim"), exist_ok=True)
            if not sharded:
                torch.save(optimizer.state_dict(), os.path.join(tmp, "optim", "optimizer.pt"))
            if lr_scheduler is not None:
                torch.save(lr_scheduler.state_dict(), os.path.join(tmp, "optim", "lr_scheduler.pt"))
        if step_scheduler is not None:
            torch.save(step_scheduler.state_dict(), os.path.join(tmp, "step_scheduler.pt"))
        if rng is not None:
            os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
            torch.save(rng.state_dict(), os.path.join(tmp, "rng", "rng.pt"))
        if dataloader is not None and hasattr(dataloader, "state_dict"):
            os.makedirs(os.path.join(tmp, "dataloader"))
            torch.save(dataloader.state_dict(), os.path.join(tmp, "dataloader", "dataloader.pt"))
            if sharded:
                dcp.save_loader_layout(os.path.join(tmp, "dataloader"), dataloader)
        if config is not None:
            with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        losses = dict(losses or {})
        if val_loss is not None:
            losses["val_loss"] = val_loss
        with open(os.path.join(tmp, "losses.json"), "w", encoding="utf-8") as f:
            json.dump(losses, f)

        # A re-save of an existing step (after resuming from an older one) swaps directories, so the
        # name always holds a complete checkpoint except for the instant between two renames.
        replaced = os.path.join(self.root, _TMP_PREFIX + "replaced_" + name)
        if os.path.isdir(final):
            os.replace(final, replaced)
        os.replace(tmp, final)
        _atomic_write_text(os.path.join(self.root, LATEST), name)
        self._update_lowest_val()
        shutil.rmtree(replaced, ignore_errors=True)
        self._prune()
        logger.info("checkpoint saved to %s in %.1f s", final, time.perf_counter() - start)
        _kill_hook(step)
        return final

    def _save_shards(
        self, tmp: str, model: torch.nn.Module, optimizer: Any, rng: Any, peft_config: Any
    ) -> torch.nn.Module | None:
        """Several ranks: each writes its model/optimizer shards and RNG; rank 0 gets back an unsharded
        copy for the files one writer makes (consolidated model, adapter), the others None."""
        from nemo_like.components.checkpoint import dcp

        dcp.barrier()  # rank 0 has created the directory
        dcp.save_model_shards(model, os.path.join(tmp, "model"), trainable_only=peft_config is not None)
        if optimizer is not None:
            dcp.save_optimizer_shards(model, optimizer, os.path.join(tmp, "optim"))
        dcp.save_rank_rng(os.path.join(tmp, "rng"), rng)
        needs_copy = self.config.save_consolidated or peft_config is not None
        full = dcp.gather_full_state(model) if needs_copy else {}
        dcp.barrier()  # every rank's files are written before rank 0 completes the directory
        if not self.is_main:
            return None
        return dcp.plain_copy(model, full, peft_config) if needs_copy else model

    def _save_model(
        self, model_dir: str, model: torch.nn.Module, tokenizer: Any, peft_config: Any, base: str | None,
        full_weights: bool = True,
    ) -> None:
        """The adapter (PEFT) or full weights, and the consolidated directory; ``full_weights=False``
        when the weights are already in the directory as DCP shards."""
        if peft_config is not None:
            from nemo_like.components._peft.adapter_io import save_peft_adapter

            save_peft_adapter(model, peft_config, model_dir, base_model_name_or_path=base)
            if self.config.save_consolidated:
                self._save_merged(model, tokenizer, os.path.join(model_dir, "consolidated"))
            return
        if full_weights:
            state = _unique_state_dict(model)
            if self.config.model_save_format == "safetensors":
                save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
            else:
                torch.save(state, os.path.join(model_dir, "model.pt"))
        if self.config.save_consolidated:
            consolidated = os.path.join(model_dir, "consolidated")
            model.save_pretrained(consolidated, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(consolidated)

    @staticmethod
    def _save_merged(model: torch.nn.Module, tokenizer: Any, out_dir: str) -> None:
        """Adapters folded into a copy of the base, so plain transformers loads the result as is."""
        if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
            logger.info("quantized base: no merged consolidated model; use `nemo-like merge-lora` on the adapter")
            return
        from nemo_like.components._peft.lora import merge_lora_weights

        merged = merge_lora_weights(copy.deepcopy(model))
        merged.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)

    def _val_loss_of(self, name: str) -> float | None:
        path = os.path.join(self.root, name, "losses.json")
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f).get("val_loss")
        except (OSError, ValueError):
            return None
        return float(value) if isinstance(value, (int, float)) else None

    def _update_lowest_val(self) -> None:
        """Point ``LOWEST_VAL`` at the step directory with the smallest validation loss (earliest on ties)."""
        scored = [(loss, i, name) for i, name in enumerate(self.step_dirs()) if (loss := self._val_loss_of(name)) is not None]
        if scored:
            best = min(scored)[2]
            if self._pointer(LOWEST_VAL) != best:
                _atomic_write_text(os.path.join(self.root, LOWEST_VAL), best)

    def _prune(self) -> None:
        """Keep the newest ``max_recent_checkpoints`` step directories plus the ones the pointers name."""
        keep_n = self.config.max_recent_checkpoints
        if keep_n is None:
            return
        dirs = self.step_dirs()
        keep = set(dirs[-keep_n:]) | {self._pointer(LATEST), self._pointer(LOWEST_VAL)}
        for name in dirs:
            if name not in keep:
                # Renamed first: a crash mid-delete leaves debris that the next start removes.
                doomed = os.path.join(self.root, _TMP_PREFIX + "pruned_" + name)
                os.replace(os.path.join(self.root, name), doomed)
                shutil.rmtree(doomed)
                logger.info("removed old checkpoint %s (max_recent_checkpoints: %d)", name, keep_n)

    # ------------------------------------------------------------------ load
    def load(
        self,
        path: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        step_scheduler: Any = None,
        dataloader: Any = None,
        rng: Any = None,
        peft_config: Any = None,
    ) -> dict[str, Any]:
        """Restore everything a checkpoint holds; returns its ``losses.json``.

        Every file is read and checked against this model and optimizer before anything
        is changed, so a checkpoint of another model is refused with nothing half-loaded.
        The RNG goes last: building the resumed data iterator draws from it.
        """
        start = time.perf_counter()
        files = {
            "optimizer": ("optim", "optimizer.pt"),
            "lr_scheduler": ("optim", "lr_scheduler.pt"),
            "step_scheduler": ("step_scheduler.pt",),
            "dataloader": ("dataloader", "dataloader.pt"),
            "rng": ("rng", "rng.pt"),
        }
        from nemo_like.components.checkpoint import dcp

        wanted = {"optimizer": optimizer, "lr_scheduler": lr_scheduler, "step_scheduler": step_scheduler,
                  "dataloader": dataloader, "rng": rng}
        optim_shards = optimizer is not None and dcp.is_sharded_checkpoint(os.path.join(path, "optim"))
        own_rng = dcp.rng_file(os.path.join(path, "rng"))  # rank > 0: its own stream, if the saved run had it
        states: dict[str, Any] = {}
        for key, parts in files.items():
            if wanted[key] is None or (key == "optimizer" and optim_shards) or (key == "rng" and own_rng is None):
                continue
            if key == "rng":
                parts = ("rng", os.path.basename(own_rng))
            file = os.path.join(path, *parts)
            if not os.path.isfile(file):
                raise CheckpointError(f"checkpoint.restore_from: {path} is incomplete (no {os.path.join(*parts)})")
            states[key] = _torch_load(file)
        load_model = self._check_model(path, model, peft_config)
        if optim_shards:
            mismatches = dcp.optimizer_shape_mismatches(os.path.join(path, "optim"), model)
            if mismatches:
                raise CheckpointError(f"checkpoint.restore_from: {path} was written for another model: its optimizer "
                                      f"state {mismatches[0]}; {_FRESH_HINT}")
        elif optimizer is not None:
            _check_optimizer(path, optimizer, states["optimizer"])

        load_model()
        if optim_shards:
            dcp.load_optimizer_shards(model, optimizer, os.path.join(path, "optim"))
        elif optimizer is not None and dcp.has_sharded_parameters(model):
            dcp.load_full_optimizer_state(model, optimizer, states["optimizer"])
        elif optimizer is not None:
            optimizer.load_state_dict(states["optimizer"])
        if lr_scheduler is not None:
            lr_scheduler.load_state_dict(states["lr_scheduler"])
        if step_scheduler is not None:
            # A checkpoint is written once its step is complete; the run goes on with the next one.
            resumed = dict(states["step_scheduler"])
            resumed["step"] = int(resumed["step"]) + 1
            step_scheduler.load_state_dict(resumed)
        if dataloader is not None:
            # Rescaled when the checkpoint had another number of data-parallel ranks.
            dataloader.load_state_dict(
                dcp.reshard_loader_state(states["dataloader"], os.path.join(path, "dataloader"), dataloader)
            )
        if rng is not None and "rng" in states:
            rng.load_state_dict(states["rng"])
        losses: dict[str, Any] = {}
        if os.path.isfile(os.path.join(path, "losses.json")):
            with open(os.path.join(path, "losses.json"), encoding="utf-8") as f:
                losses = json.load(f)
        logger.info("resumed from %s in %.1f s", path, time.perf_counter() - start)
        return losses

    def _check_model(self, path: str, model: torch.nn.Module, peft_config: Any) -> Any:
        """Compare the saved tensors' names and shapes with ``model``; returns the loader to run once all checks pass."""
        from nemo_like.components.checkpoint import dcp

        model_dir = os.path.join(path, "model")
        if dcp.is_sharded_checkpoint(model_dir):  # written by several ranks: any layout reads it
            trainable_only = peft_config is not None
            saved = dcp.saved_shapes(model_dir)
            _refuse_if_different(path, saved, dcp.expected_model_shapes(model, trainable_only))
            return lambda: dcp.load_model_shards(model, model_dir, trainable_only)
        adapter = os.path.join(model_dir, "adapter_model.safetensors")
        full = [f for f in (os.path.join(model_dir, "model.safetensors"), os.path.join(model_dir, "model.pt"))
                if os.path.isfile(f)]
        if peft_config is not None:
            if not os.path.isfile(adapter):
                raise CheckpointError(
                    f"checkpoint.restore_from: {path} holds {'full model weights' if full else 'no model'}, "
                    f"but this run trains a LoRA adapter; {_FRESH_HINT}"
                )
            if dcp.has_sharded_parameters(model):
                raise CheckpointError(f"checkpoint.restore_from: {path} holds a single-process LoRA adapter, which a "
                                      f"sharded run cannot resume; resume it with one process, or {_FRESH_HINT}")
            return self._check_adapter(path, adapter, model)
        if not full:
            what = "a LoRA adapter" if os.path.isfile(adapter) else "no model weights"
            raise CheckpointError(
                f"checkpoint.restore_from: {path} holds {what}, but this run fine-tunes the full model; {_FRESH_HINT}"
            )
        file = full[0]
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as f:
                saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            saved = {k: tuple(v.shape) for k, v in loaded.items()}
        expected = (dcp.unique_shapes(model) if dcp.has_sharded_parameters(model)
                    else {k: tuple(t.shape) for k, t in _unique_entries(model).items()})
        _refuse_if_different(path, saved, expected)

        def apply() -> None:
            state = load_file(file) if file.endswith(".safetensors") else _torch_load(file)
            if dcp.has_sharded_parameters(model):  # a single-process checkpoint into a sharded run
                dcp.load_full_model_state(model, state)
                return
            with torch.no_grad():
                live = model.state_dict(keep_vars=True)
                for key, tensor in state.items():
                    live[key].copy_(tensor)

        return apply

    @staticmethod
    def _check_adapter(path: str, adapter: str, model: torch.nn.Module) -> Any:
        from nemo_like.components._peft.adapter_io import load_peft_adapter

        def apply() -> None:
            try:
                load_peft_adapter(model, os.path.dirname(adapter))
            except ValueError as e:  # it checks every tensor before copying any
                raise CheckpointError(
                    f"checkpoint.restore_from: {path} was written for another model: {e}; {_FRESH_HINT}"
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
            f"({_describe_mismatch(missing, unexpected, mismatched)}); {_FRESH_HINT}"
        )


def _check_optimizer(path: str, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer must cover the same parameters, group by group, with state of their shapes."""
    groups = [g["params"] for g in saved.get("param_groups", [])]
    live = [g["params"] for g in optimizer.param_groups]
    if [len(g) for g in groups] != [len(g) for g in live]:
        raise CheckpointError(
            f"checkpoint.restore_from: {path} was written for another model: its optimizer state covers parameter "
            f"groups of sizes {[len(g) for g in groups]}, this run trains {[len(g) for g in live]}; {_FRESH_HINT}"
        )
    params = dict(zip((i for g in groups for i in g), (p for g in live for p in g)))
    for index, state in saved.get("state", {}).items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(
                    f"checkpoint.restore_from: {path} was written for another model: its optimizer state '{name}' "
                    f"has shape {list(value.shape)} for a parameter of shape {list(params[index].shape)}; {_FRESH_HINT}"
                )


def _stall_hook(step: int, where: str) -> None:
    if os.environ.get("NEMO_LIKE_TEST_STALL_SAVE") == str(step):
        print(f"test hook: stalling the save of step {step} in {where}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def _kill_hook(step: int) -> None:
    if os.environ.get("NEMO_LIKE_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
