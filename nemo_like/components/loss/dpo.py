"""Preference losses on the log-probabilities of a chosen and a rejected completion of one prompt.

Inputs are per pair: ``chosen_logps`` / ``rejected_logps`` are the policy's summed token
log-probabilities of each completion, ``ref_*`` the frozen reference model's (not needed by the
reference-free losses), ``chosen_tokens`` / ``rejected_tokens`` the completions' token counts
(for the length-normalised losses), ``chosen_nll`` the summed negative log-likelihood of the
chosen tokens (for ``sft`` and ``rpo_alpha``). With ``r_c = chosen_logps - ref_chosen_logps``,
``r_r`` likewise and ``d = r_c - r_r``:

* ``sigmoid`` (DPO, Rafailov et al. 2023, arXiv:2305.18290): ``-log s(b d)``; with
  ``label_smoothing`` e, conservative DPO: ``-(1-e) log s(b d) - e log s(-b d)``.
* ``ipo`` (Azar et al. 2023, arXiv:2310.12036, eq. 17): ``(d' - 1/(2b))^2`` with ``d'`` the
  difference of the per-token log ratios (each divided by its completion's length, as TRL).
* ``hinge`` (SLiC, Zhao et al. 2023, arXiv:2305.10425): ``max(0, 1 - b d)``.
* ``robust`` (rDPO, Chowdhury et al. 2024, arXiv:2403.00409): ``((1-e)(-log s(b d)) - e(-log s(-b d))) / (1-2e)``.
* ``apo_zero`` / ``apo_down`` (APO, D'Oosterlinck et al. 2024, arXiv:2408.06266, eqs. 7 and 8):
  ``1 - s(b r_c) + s(b r_r)`` and ``s(b r_c) + 1 - s(b d)``.
* ``simpo`` (Meng et al. 2024, arXiv:2405.14734), reference-free:
  ``-log s(b (chosen_logps/|c| - rejected_logps/|r|) - gamma)``.
* ``sft``: the chosen completion's mean token NLL (the SFT term of RPO, Pang et al. 2024, arXiv:2404.19733).

``loss_type`` may be a list with ``loss_weights`` (``[sigmoid, sft]`` weighted sums, as TRL's
MPO); ``rpo_alpha`` adds ``rpo_alpha`` times the ``sft`` term. Per-pair losses are summed and
divided by ``num_pairs`` (the step's global pair count, so micro-batches and ranks add up to one
mean); token-mean terms divide by ``num_chosen_tokens`` likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "simpo", "sft")
REFERENCE_FREE = frozenset({"simpo", "sft"})


def _need_lengths(kind: str, chosen_tokens: torch.Tensor | None, rejected_tokens: torch.Tensor | None) -> None:
    if chosen_tokens is None or rejected_tokens is None:
        raise ValueError(f"loss_fn: {kind} needs the completions' token counts")


class DPOLoss:
    """``__call__(chosen_logps, rejected_logps, ...)`` -> (loss, metrics); see the module docstring."""

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str | Sequence[str] = "sigmoid",
        loss_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        rpo_alpha: float | None = None,
        gamma: float = 0.5,
    ) -> None:
        types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        unknown = [t for t in types if t not in LOSS_TYPES]
        if not types or unknown:
            raise ValueError(f"loss_fn.loss_type: {unknown or types!r} not among {list(LOSS_TYPES)}")
        weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
        if len(weights) != len(types):
            raise ValueError(f"loss_fn.loss_weights: {len(weights)} weight(s) for {len(types)} loss type(s)")
        if not beta > 0:
            raise ValueError(f"loss_fn.beta: must be > 0, got {beta!r}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"loss_fn.label_smoothing: must be in [0, 0.5), got {label_smoothing!r}")
        if label_smoothing and not set(types) & {"sigmoid", "robust"}:
            raise ValueError("loss_fn.label_smoothing: only the sigmoid and robust losses use it")
        self.beta, self.types, self.weights = float(beta), types, weights
        self.label_smoothing, self.gamma = float(label_smoothing), float(gamma)
        self.rpo_alpha = None if rpo_alpha is None else float(rpo_alpha)

    @property
    def needs_reference(self) -> bool:
        """Whether a reference model's log-probabilities are needed (not for SimPO / SFT alone)."""
        return any(t not in REFERENCE_FREE for t in self.types)

    @property
    def needs_chosen_nll(self) -> bool:
        return "sft" in self.types or bool(self.rpo_alpha)

    def __call__(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        chosen_tokens: torch.Tensor | None = None,
        rejected_tokens: torch.Tensor | None = None,
        chosen_nll: torch.Tensor | None = None,
        num_pairs: int | torch.Tensor | None = None,
        num_chosen_tokens: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.needs_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
            raise ValueError(f"loss_fn: {self.types} need the reference model's log-probabilities")
        pairs = chosen_logps.numel() if num_pairs is None else num_pairs
        b, e = self.beta, self.label_smoothing
        r_c = chosen_logps - ref_chosen_logps if ref_chosen_logps is not None else chosen_logps
        r_r = rejected_logps - ref_rejected_logps if ref_rejected_logps is not None else rejected_logps
        d = r_c - r_r
        pair_sum = chosen_logps.new_zeros(())  # per-pair losses, divided by the step's pairs
        token_mean = chosen_logps.new_zeros(())  # per-token terms, already divided by the step's chosen tokens
        for kind, weight in zip(self.types, self.weights):
            if kind == "sft":
                token_mean = token_mean + weight * self._sft(chosen_nll, chosen_tokens, num_chosen_tokens)
                continue
            if kind == "sigmoid":
                per_pair = -(1 - e) * F.logsigmoid(b * d) - e * F.logsigmoid(-b * d)
            elif kind == "ipo":
                _need_lengths(kind, chosen_tokens, rejected_tokens)
                per_token = r_c / chosen_tokens.clamp(min=1) - r_r / rejected_tokens.clamp(min=1)
                per_pair = (per_token - 1 / (2 * b)) ** 2
            elif kind == "hinge":
                per_pair = torch.relu(1 - b * d)
            elif kind == "robust":
                per_pair = (-(1 - e) * F.logsigmoid(b * d) + e * F.logsigmoid(-b * d)) / (1 - 2 * e)
            elif kind == "apo_zero":
                per_pair = 1 - torch.sigmoid(b * r_c) + torch.sigmoid(b * r_r)
            elif kind == "apo_down":
                per_pair = torch.sigmoid(b * r_c) + 1 - torch.sigmoid(b * d)
            else:  # simpo: the policy's own per-token log-probabilities, no reference
                _need_lengths(kind, chosen_tokens, rejected_tokens)
                margin = chosen_logps / chosen_tokens.clamp(min=1) - rejected_logps / rejected_tokens.clamp(min=1)
                per_pair = -F.logsigmoid(b * margin - self.gamma)
            pair_sum = pair_sum + weight * per_pair.sum()
        if self.rpo_alpha:
            token_mean = token_mean + self.rpo_alpha * self._sft(chosen_nll, chosen_tokens, num_chosen_tokens)
        with torch.no_grad():
            metrics: dict[str, Any] = {
                "rewards/chosen": (b * r_c).detach(), "rewards/rejected": (b * r_r).detach(),
                "rewards/margins": (b * d).detach(), "rewards/accuracies": (d > 0).float(),
            }
        return pair_sum / pairs + token_mean, metrics

    @staticmethod
    def _sft(chosen_nll: torch.Tensor | None, chosen_tokens: torch.Tensor | None,
             num_chosen_tokens: int | torch.Tensor | None) -> torch.Tensor:
        """This micro-batch's chosen-token NLL over the step's chosen tokens (micro-batches add up to the mean)."""
        if chosen_nll is None or chosen_tokens is None:
            raise ValueError("loss_fn: sft / rpo_alpha need the chosen completions' NLL and token counts")
        tokens = chosen_tokens.sum() if num_chosen_tokens is None else num_chosen_tokens
        return chosen_nll.sum() / tokens
