"""NEFTune: uniform noise on the input embeddings while fine-tuning (Jain et al., 2023, arXiv:2310.05914).

Why a forward hook: the noise belongs to training, not to the model. A hook on the input
embedding layer adds it to that layer's output only while the layer is in training mode, so
evaluation, generation and the saved weights are those of the plain model (a hook adds no
parameter, buffer or state-dict key), and ``deactivate`` leaves nothing behind.

Scale: each element of the noise is drawn from ``U(-m, m)`` with
``m = noise_alpha / sqrt(L * d)``, ``L`` the length of the embedded rows as they come in (padding
and, for packed rows, every document of the pack included) and ``d`` the hidden size. The paper's
code divides by each row's unpadded length instead; the hook sees no attention mask, and this is
the scale TRL's and NeMo AutoModel's NEFTune use, so a recipe tuned there keeps its noise here. A
padded batch therefore gets slightly less noise per token than its real lengths would give.
The noise is drawn from torch's RNG on the embedding's device, which the run's RNG state saves,
so a resumed run draws the same noise.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

logger = logging.getLogger("nemo_like")

__all__ = ["NEFTune", "input_embeddings", "neftune_magnitude"]


def neftune_magnitude(noise_alpha: float, seq_len: int, hidden_size: int) -> float:
    """The bound ``m`` of the uniform noise, ``noise_alpha / sqrt(seq_len * hidden_size)``."""
    return noise_alpha / math.sqrt(max(seq_len * hidden_size, 1))


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's token embedding layer (through a DDP wrapper); a clear error when it has none."""
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module
    getter = getattr(inner, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if not isinstance(embeddings, nn.Module):
        raise ValueError(f"neftune: {type(inner).__name__} has no input embedding layer (get_input_embeddings())")
    return embeddings


class NEFTune:
    """Adds NEFTune noise to a model's input embeddings in training mode; ``noise_alpha`` 0 adds none."""

    def __init__(self, noise_alpha: float = 5.0) -> None:
        if isinstance(noise_alpha, bool) or not isinstance(noise_alpha, (int, float)) or not math.isfinite(noise_alpha) \
                or noise_alpha < 0:
            raise ValueError(f"neftune.noise_alpha: must be a finite number >= 0, got {noise_alpha!r}")
        self.noise_alpha = float(noise_alpha)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def is_active(self) -> bool:
        return self._handle is not None

    def activate(self, model: nn.Module) -> None:
        """Hook the model's input embeddings; once per model (a second call is an error, not double noise)."""
        if self._handle is not None:
            raise RuntimeError("NEFTune is already active; deactivate() it first")
        self._handle = input_embeddings(model).register_forward_hook(self._add_noise)
        logger.info("NEFTune on: noise_alpha=%g, uniform noise of bound noise_alpha/sqrt(seq_len*hidden) "
                    "on the input embeddings while training", self.noise_alpha)

    def deactivate(self, model: nn.Module | None = None) -> None:
        """Remove the hook (a no-op when not active); the model is as it was before ``activate``."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _add_noise(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training or self.noise_alpha == 0 or not isinstance(output, torch.Tensor) or output.dim() < 2:
            return output
        bound = neftune_magnitude(self.noise_alpha, output.size(-2), output.size(-1))
        return output + torch.empty_like(output).uniform_(-bound, bound)
