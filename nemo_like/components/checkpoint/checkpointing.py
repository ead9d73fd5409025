"""Step checkpoints in a fixed layout, written atomically, sealed by a manifest, read back for an exact resume.

``checkpoint_dir/epoch_{E}_step_{S}/`` holds ``model/`` (safetensors, or an HF-PEFT
adapter for PEFT runs), ``model/consolidated/`` (a directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads as is), ``optim/``,
``step_scheduler.pt``, ``rng/``, ``dataloader/``, ``config.yaml``, ``losses.json`` and,
last, ``MANIFEST.json`` (every file's size and checksum, see ``manifest.py``). ``LATEST``
and ``LOWEST_VAL`` at the root name the newest and the best step directory.

With several ranks (FSDP2, tensor parallel, DDP) ``model/`` and ``optim/`` hold sharded
``torch.distributed.checkpoint`` files instead (see ``dcp.py``), which load into any
number of ranks, and every rank takes part in a save; ``model/consolidated/`` is still
one plain Hugging Face directory, and rank 0 writes it and the manifest once every rank's
shards are on disk.

A step is written under ``.tmp_<name>`` and renamed when complete; the pointers move
only after that, so a crash mid-save never leaves a half checkpoint behind a pointer,
and anything named ``.tmp_*`` is debris that the next start removes. A save refuses
weights holding NaN/inf (``finite_weights.py``) and a disk too small for it
(``disk_space.py``) before writing anything; a write that fails removes the partial
directory at once. A resume checks the manifest before anything loads, and a damaged
checkpoint, a pointer holding garbage or naming a missing directory are one-line
``CheckpointError``s. Nothing is read with pickle beyond ``torch.load(weights_only=True)``.
``Checkpointer.observers`` are called at each stage of every save (to copy a finished checkpoint
elsewhere, or, in the tests, to kill the process at the worst moments).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import yaml

from nemo_like.components.checkpoint import dcp
from nemo_like.components.checkpoint.background_sync import BackgroundSync
from nemo_like.components.checkpoint.compatibility import (
    check_model, check_optimizer, read_states, state_file,
)
from nemo_like.components.checkpoint.config import CheckpointingConfig
from nemo_like.components.checkpoint.disk_space import (
    DiskFullError, checkpoint_bytes, disk_full_error, is_disk_full, refuse_if_no_room,
)
from nemo_like.components.checkpoint.earlier_run import set_aside_earlier_run
from nemo_like.components.checkpoint.errors import FRESH_HINT, CheckpointError
from nemo_like.components.checkpoint.finite_weights import refuse_non_finite
from nemo_like.components.checkpoint.manifest import (
    has_manifest, missing_manifest_error, verify_manifest, write_manifest,
)
from nemo_like.components.checkpoint.model_files import save_model_files
from nemo_like.components.checkpoint.model_state import ModelState, as_model_state
from nemo_like.components.checkpoint.pointers import (
    LATEST, LOWEST_VAL, STEP_DIR, TMP_PREFIX, atomic_write_text, fsync_path, pointer_or_none, read_pointer,
)
from nemo_like.components.checkpoint.torch_file import save_torch
from nemo_like.components.loggers.phase_progress import PhaseProgress, format_bytes

__all__ = ["CheckpointError", "Checkpointer", "CheckpointingConfig", "LATEST", "LOWEST_VAL", "drop_records_after"]

logger = logging.getLogger("nemo_like")

_REPLACED = TMP_PREFIX + "replaced_"


def _tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` so far (a save's progress); a file under two names counts once."""
    sizes = {}
    for here, _, names in os.walk(path):
        for name in names:
            stat = os.stat(os.path.join(here, name))
            sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())


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
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


class Checkpointer:
    """Writes and reads the training state of one step; only the main rank writes files."""

    # Called as observer(stage, step, directory) at each stage of every save: "model_written",
    # "files_written", "sealed" (manifest written), "renamed", "latest_moved", "saved".
    observers: ClassVar[list[Callable[[str, int, str], None]]] = []

    def __init__(self, config: CheckpointingConfig, is_main: bool = True) -> None:
        self.config = config
        self.is_main = is_main
        self.root = os.path.abspath(os.path.expanduser(config.checkpoint_dir))
        self._verified: set[str] = set()  # step directories whose manifest this process has checked
        self._writing: str | None = None  # the file a save is writing, for a disk-full message
        self._progress: PhaseProgress | None = None  # the save under way
        self._syncing: BackgroundSync | None = None  # flushes of a save's finished files

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
            match = STEP_DIR.match(name)
            if match and os.path.isdir(os.path.join(self.root, name)):
                found.append((int(match.group(2)), int(match.group(1)), name))
        return [name for _, _, name in sorted(found)]

    def _pointer(self, name: str) -> str | None:
        return pointer_or_none(self.root, name)

    def latest(self) -> str | None:
        """Path of the newest checkpoint: ``LATEST``'s target, else the highest step directory.

        A ``LATEST`` holding garbage or naming a missing directory is a one-line ``CheckpointError``.
        """
        name = read_pointer(self.root, LATEST)
        if name is None:
            dirs = self.step_dirs()
            name = dirs[-1] if dirs else None
        return os.path.join(self.root, name) if name else None

    def lowest_val(self) -> str | None:
        name = self._pointer(LOWEST_VAL)
        return os.path.join(self.root, name) if name else None

    def discard_partial(self) -> list[str]:
        """Remove ``.tmp_*`` debris of saves that a crash interrupted; returns the names removed.

        A step directory that a crash caught mid-swap (moved aside, its successor not yet in
        place) is put back instead: it is complete and sealed.
        """
        if not self.is_main or not os.path.isdir(self.root):
            return []
        removed = []
        for name in sorted(os.listdir(self.root)):
            if not name.startswith(TMP_PREFIX):
                continue
            path = os.path.join(self.root, name)
            original = name[len(_REPLACED):] if name.startswith(_REPLACED) else ""
            if STEP_DIR.match(original) and not os.path.exists(os.path.join(self.root, original)):
                os.replace(path, os.path.join(self.root, original))
                logger.info("put back %s, moved aside by an interrupted save", original)
                continue
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
        if removed:
            logger.info("removed %s left by an interrupted save in %s", ", ".join(removed), self.root)
        return removed

    def verify(self, path: str) -> None:
        """Check ``path`` against its ``MANIFEST.json`` (sizes, then every file's checksum); one-line errors."""
        path = os.path.abspath(path)
        if path not in self._verified:
            verify_manifest(path)
            self._verified.add(path)

    def resume_path(self) -> str | None:
        """The step directory this run continues from (``restore_from``), checked against its manifest; or None."""
        self.discard_partial()
        choice = self.config.restore_from
        if choice is None:  # fresh: an earlier run here is moved aside, never appended to (see earlier_run.py)
            if self.is_main:
                set_aside_earlier_run(self.root)
            return None
        choice = str(choice)
        if choice == LATEST:
            path = self.latest() if self.config.enabled else None
        else:
            path = self._chosen(choice)
        if path is not None:
            self.verify(path)
        return path

    def _chosen(self, choice: str) -> str:
        for path in (os.path.join(self.root, choice), os.path.abspath(os.path.expanduser(choice))):
            if os.path.isdir(path):
                if os.path.basename(path).startswith(TMP_PREFIX):
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
        parts: dict[str, Any],
        *,
        config: dict[str, Any] | None = None,
        losses: dict[str, Any] | None = None,
        val_loss: float | None = None,
    ) -> str | None:
        """Write one step directory, seal it with its manifest, then move ``LATEST`` (and ``LOWEST_VAL``) and prune.

        ``parts`` is the run's stateful objects by name: ``model`` (a module or a ``ModelState``),
        ``optim``, ``lr_scheduler``, ``step_scheduler``, ``dataloader``, ``rng``, and any other
        object with ``state_dict()``, written as ``<name>.pt``. Returns the directory's path. With
        several ranks every rank must call this: each writes its model and optimizer shards (see
        ``dcp``), and rank 0 writes the rest and completes the directory. Weights holding NaN/inf,
        or a disk without room for the estimate, are refused before anything is written
        (``CheckpointError`` subclasses); a write that fails removes the partial directory, and a
        full disk says where and how many bytes it needed.
        """
        sharded = dcp.distributed_run()
        if not self.config.enabled or not (self.is_main or sharded):
            return None
        start = time.perf_counter()
        parts = {**parts, "model": as_model_state(parts["model"])}
        model, adapter_only = parts["model"].model, parts["model"].adapter_only
        name = self.step_dir_name(epoch, step)
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, TMP_PREFIX + name)
        latest = self._pointer(LATEST)
        refuse_non_finite(model, step, adapter_only, latest)
        needed = checkpoint_bytes(model, parts.get("optim"), adapter_only, self.config.save_consolidated,
                                  shares_weights=not sharded and self.config.model_save_format == "safetensors")
        free = refuse_if_no_room(self.root, step, needed, latest)
        self._writing = None
        # A consolidated copy of a large model takes minutes: bytes written against the estimate, with time left.
        self._progress = PhaseProgress(f"checkpoint of step {step}", needed, enabled=self.is_main,
                                       count_format=format_bytes)
        self._syncing = BackgroundSync() if self.config.fsync else None
        try:
            done = self._write(tmp, step, parts, config, losses, val_loss, sharded)
        except BaseException as err:
            self._stop_syncing()
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, Exception) and is_disk_full(err):
                raise disk_full_error(step, tmp, self._writing, needed, free, latest) from err
            raise
        self._stop_syncing()
        if not done:  # ranks other than 0 are done
            return None
        try:
            self._publish(name, tmp, final, step)
        except OSError as err:
            if is_disk_full(err):  # the directory is complete and sealed; only a pointer could not be written
                raise DiskFullError(f"checkpoint of step {step}: no space left on device while writing "
                                    f"{self._writing}; {final} is complete, resume from it with "
                                    f"--checkpoint.restore_from {name} once there is space") from err
            raise
        logger.info("checkpoint saved to %s in %.1f s", final, time.perf_counter() - start)
        self._notify("saved", step, final)
        return final

    def _notify(self, stage: str, step: int, directory: str) -> None:
        for observer in Checkpointer.observers:
            observer(stage, step, directory)

    def _file(self, tmp: str, *parts: str) -> str:
        """The path of the next file written (remembered for a disk-full message); the files before it are done,
        and go to disk in the background meanwhile."""
        if self._progress is not None and self._progress.enabled and os.path.isdir(tmp):
            self._progress.update_to(_tree_bytes(tmp))
        self._writing = os.path.join(tmp, *parts)
        if self._syncing is not None:
            self._syncing.finished(tmp, writing=self._writing)
        return self._writing

    def _stop_syncing(self) -> None:
        if self._syncing is not None:
            self._syncing.close()
            self._syncing = None

    def _write(self, tmp: str, step: int, parts: dict[str, Any], config: dict[str, Any] | None,
               losses: dict[str, Any] | None, val_loss: float | None, sharded: bool) -> bool:
        """Every file of the step under ``tmp``, the manifest last; False on ranks other than 0 (their part is done)."""
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(os.path.join(tmp, "model"), exist_ok=True)
        part = parts["model"]
        model = part.model
        if sharded:
            model = self._save_shards(tmp, part, parts.get("optim"), parts.get("rng"))
            if model is None:
                return False
        self._save_model(tmp, part, model, full_weights=not sharded)
        self._notify("model_written", step, tmp)
        for key, obj in parts.items():
            if key == "model" or obj is None or (key == "optim" and sharded):
                continue
            if key == "dataloader" and not hasattr(obj, "state_dict"):
                continue
            where = state_file(key)
            os.makedirs(os.path.join(tmp, *where[:-1]), exist_ok=True)
            save_torch(obj.state_dict(), self._file(tmp, *where))
            if key == "dataloader" and sharded:
                dcp.save_loader_layout(os.path.join(tmp, "dataloader"), obj)
        if config is not None:
            with open(self._file(tmp, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        losses = dict(losses or {})
        if val_loss is not None:
            losses["val_loss"] = val_loss
        with open(self._file(tmp, "losses.json"), "w", encoding="utf-8") as f:
            json.dump(losses, f)
        self._notify("files_written", step, tmp)
        self._file(tmp, "MANIFEST.json")
        self._stop_syncing()  # the flushes started while later files were written
        write_manifest(tmp, sync=self.config.fsync)  # last: its presence says every other file is complete
        if self._progress is not None and self._progress.enabled:
            self._progress.update_to(self._progress.total)
        self._notify("sealed", step, tmp)
        return True

    def _publish(self, name: str, tmp: str, final: str, step: int) -> None:
        """Rename the sealed directory into place, then move the pointers and prune.

        A re-save of an existing step (after resuming from an older one) swaps directories; a
        crash between the two renames leaves the old one aside, which the next start puts back.
        """
        replaced = os.path.join(self.root, _REPLACED + os.path.basename(final))
        if os.path.isdir(final):
            os.replace(final, replaced)
        os.replace(tmp, final)
        fsync_path(self.root)
        self._verified.discard(final)
        self._notify("renamed", step, final)
        self._writing = os.path.join(self.root, LATEST)
        atomic_write_text(self._writing, name)
        fsync_path(self.root)
        self._notify("latest_moved", step, final)
        self._update_lowest_val()
        shutil.rmtree(replaced, ignore_errors=True)
        self._prune()

    def _save_shards(self, tmp: str, part: ModelState, optimizer: Any, rng: Any) -> torch.nn.Module | None:
        """Several ranks: each writes its model/optimizer shards and RNG; rank 0 gets back an unsharded
        copy for the files one writer makes (consolidated model, adapter), the others None."""
        model = part.model
        dcp.barrier()  # rank 0 has created the directory
        self._file(tmp, "model")
        dcp.save_model_shards(model, os.path.join(tmp, "model"), trainable_only=part.adapter_only)
        if optimizer is not None:
            dcp.save_optimizer_shards(model, optimizer, self._file(tmp, "optim"))
        dcp.save_rank_rng(self._file(tmp, "rng"), rng)
        needs_copy = self.config.save_consolidated or part.adapter_only
        full = dcp.gather_full_state(model) if needs_copy else {}
        dcp.barrier()  # every rank's files are written before rank 0 completes the directory
        if not self.is_main:
            return None
        return dcp.plain_copy(model, full, part.add_adapters) if needs_copy else model

    def _save_model(self, tmp: str, part: ModelState, model: torch.nn.Module, full_weights: bool = True) -> None:
        """The adapter or full weights of ``model`` (the live one, or an unsharded copy), and the consolidated
        directory; ``full_weights=False`` when the weights are already in the directory as DCP shards."""
        save_model_files(part, model, lambda *names: self._file(tmp, *names), consolidated=bool(
            self.config.save_consolidated), save_format=self.config.model_save_format, full_weights=full_weights)

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
                atomic_write_text(os.path.join(self.root, LOWEST_VAL), best)

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
                doomed = os.path.join(self.root, TMP_PREFIX + "pruned_" + name)
                os.replace(os.path.join(self.root, name), doomed)
                shutil.rmtree(doomed)
                logger.info("removed old checkpoint %s (max_recent_checkpoints: %d)", name, keep_n)

    # ------------------------------------------------------------------ load
    def load(self, path: str, parts: dict[str, Any]) -> dict[str, Any]:
        """Restore every part of ``parts`` (the same names ``save`` took) from ``path``; returns its ``losses.json``.

        The manifest is checked first (once per process; ``resume_path`` already did it on
        resume), then every file is read and checked against this model and optimizer before
        anything is changed, so a damaged checkpoint or one of another model is refused with
        nothing half-loaded. A directory without a manifest is refused too, after its headers
        (never unpickled) had the chance to name a more specific problem. The RNG goes last:
        building the resumed data iterator draws from it.
        """
        start = time.perf_counter()
        parts = {**parts, "model": as_model_state(parts["model"])}
        model, optimizer = parts["model"].model, parts.get("optim")
        sealed = has_manifest(path)
        if sealed:
            self.verify(path)
        try:
            load_model = check_model(path, parts["model"])
        except CheckpointError:
            raise
        except Exception as err:
            if sealed:
                raise
            raise missing_manifest_error(path) from err
        if not sealed:
            raise missing_manifest_error(path)
        states = read_states(path, parts)
        optim_shards = optimizer is not None and dcp.is_sharded_checkpoint(os.path.join(path, "optim"))
        if optim_shards:
            mismatches = dcp.optimizer_shape_mismatches(os.path.join(path, "optim"), model)
            if mismatches:
                raise CheckpointError(f"checkpoint.restore_from: {path} was written for another model: its optimizer "
                                      f"state {mismatches[0]}; {FRESH_HINT}")
        elif optimizer is not None:
            check_optimizer(path, optimizer, states["optim"])

        load_model()
        if optim_shards:
            dcp.load_optimizer_shards(model, optimizer, os.path.join(path, "optim"))
        elif optimizer is not None and dcp.has_sharded_parameters(model):
            dcp.load_full_optimizer_state(model, optimizer, states["optim"])
        elif optimizer is not None:
            optimizer.load_state_dict(states["optim"])
        if "step_scheduler" in states:
            # A checkpoint is written once its step is complete; the run goes on with the next one.
            resumed = dict(states["step_scheduler"])
            resumed["step"] = int(resumed["step"]) + 1
            parts["step_scheduler"].load_state_dict(resumed)
        if "dataloader" in states:
            # Rescaled when the checkpoint had another number of data-parallel ranks.
            loader = parts["dataloader"]
            loader.load_state_dict(dcp.reshard_loader_state(states["dataloader"], os.path.join(path, "dataloader"),
                                                            loader))
        for key, state in states.items():
            if key not in ("optim", "step_scheduler", "dataloader", "rng"):
                parts[key].load_state_dict(state)  # lr_scheduler and any part a method added
        if "rng" in states:
            parts["rng"].load_state_dict(states["rng"])
        losses: dict[str, Any] = {}
        if os.path.isfile(os.path.join(path, "losses.json")):
            with open(os.path.join(path, "losses.json"), encoding="utf-8") as f:
                losses = json.load(f)
        logger.info("resumed from %s in %.1f s", path, time.perf_counter() - start)
        return losses
