"""Step checkpoints in a fixed layout, written atomically.

``checkpoint_dir/epoch_{E}_step_{S}/`` holds ``model/`` (safetensors, or an HF-PEFT
adapter for PEFT runs), ``model/consolidated/`` (a directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads as is), ``optim/``,
``step_scheduler.pt``, ``rng/``, ``dataloader/``, ``config.yaml`` and ``losses.json``.
A step is written under a temporary name and renamed when complete; ``LATEST`` moves
only after that, so a crash mid-save never leaves a half checkpoint behind a pointer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

logger = logging.getLogger("nemo_like")

_TMP_PREFIX = ".tmp_"


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


@dataclass
class CheckpointingConfig:
    """The ``checkpoint`` section."""

    enabled: bool = True
    checkpoint_dir: str = "checkpoints/"
    model_save_format: str = "safetensors"
    save_consolidated: bool = True
    restore_from: str | None = None
    max_recent_checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.model_save_format not in ("safetensors", "torch_save"):
            raise ValueError(
                f"checkpoint.model_save_format: {self.model_save_format!r} is not 'safetensors' or 'torch_save'"
            )


class Checkpointer:
    """Writes the training state of one step; only the main rank writes files."""

    def __init__(self, config: CheckpointingConfig, is_main: bool = True) -> None:
        self.config = config
        self.is_main = is_main
        self.root = os.path.abspath(os.path.expanduser(config.checkpoint_dir))

    @staticmethod
    def step_dir_name(epoch: int, step: int) -> str:
        return f"epoch_{epoch}_step_{step}"

    def latest(self) -> str | None:
        pointer = os.path.join(self.root, "LATEST")
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(self.root, name)
        return path if os.path.isdir(path) else None

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
    ) -> str | None:
        """Write one step directory and move ``LATEST`` to it; returns its path."""
        if not self.config.enabled or not self.is_main:
            return None
        start = time.perf_counter()
        name = self.step_dir_name(epoch, step)
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, _TMP_PREFIX + name)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "model"), exist_ok=True)
        self._save_model(os.path.join(tmp, "model"), model, tokenizer, peft_config, base_model_name_or_path)
        if optimizer is not None:
            os.makedirs(os.path.join(tmp, "optim"))
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optim", "optimizer.pt"))
            if lr_scheduler is not None:
                torch.save(lr_scheduler.state_dict(), os.path.join(tmp, "optim", "lr_scheduler.pt"))
        if step_scheduler is not None:
            torch.save(step_scheduler.state_dict(), os.path.join(tmp, "step_scheduler.pt"))
        if rng is not None:
            os.makedirs(os.path.join(tmp, "rng"))
            torch.save(rng.state_dict(), os.path.join(tmp, "rng", "rng.pt"))
        if dataloader is not None and hasattr(dataloader, "state_dict"):
            os.makedirs(os.path.join(tmp, "dataloader"))
            torch.save(dataloader.state_dict(), os.path.join(tmp, "dataloader", "dataloader.pt"))
        if config is not None:
            with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        if losses is not None:
            with open(os.path.join(tmp, "losses.json"), "w", encoding="utf-8") as f:
                json.dump(losses, f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(os.path.join(self.root, "LATEST"), name)
        logger.info("checkpoint saved to %s in %.1f s", final, time.perf_counter() - start)
        return final

    def _save_model(
        self, model_dir: str, model: torch.nn.Module, tokenizer: Any, peft_config: Any, base: str | None
    ) -> None:
        if peft_config is not None:
            from nemo_like.components._peft.adapter_io import save_peft_adapter

            save_peft_adapter(model, peft_config, model_dir, base_model_name_or_path=base)
            return
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
