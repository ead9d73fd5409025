"""GRPO: group-relative advantages and the clipped policy-gradient loss (Shao et al. 2024, arXiv:2402.03300).

The semantics follow TRL 1.16's ``GRPOTrainer`` so that a run here and a TRL run agree number for number; the one
deliberate difference is normalisation. TRL divides ``grpo``, ``bnpo`` and ``dr_grpo`` micro-batches by their
own counts and then by the number of accumulation steps, so the step's loss depends on how the batch was split.
Here every division is by the counts of the whole optimizer step (all micro-batches, all data-parallel ranks),
passed in as ``num_sequences`` and ``num_tokens``: the micro-batch losses then add up to the full-batch loss
under any split.

With ``r`` the importance ratio ``exp(logp - old_logp)`` (per token, or per sequence from the mean log-ratio of
its completion tokens, as GSPO, arXiv:2507.18071), ``A`` the sequence's advantage and ``m`` the completion mask::

    token loss  l = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)  [+ beta * k3 KL to the reference]
    grpo        sum_seq (sum_tok m l / max(1, sum_tok m)) / num_sequences
    bnpo, dapo  sum_tok m l / num_tokens
    dr_grpo     sum_tok m l / (num_sequences * max_completion_length)   (Liu et al. 2025, arXiv:2503.20783)

``bnpo`` and ``dapo`` differ in TRL only in which tokens they count (the local micro-batch or the whole
accumulated batch); with global counts they are the same loss. ``delta`` caps the unclipped ratio from above
(two-sided clipping, INTELLECT-2, arXiv:2505.07291).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SCALE_REWARDS = ("group", "batch", "none")
# TRL's constant added to the standard deviation before dividing by it: keeps all-equal groups finite.
STD_EPSILON = 1e-4
COUNT = "/count"  # suffix of a metric's denominator key

logger = logging.getLogger(__name__)


def _nanmean(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return torch.nanmean(x) if dim is None else torch.nanmean(x, dim=dim, keepdim=True)


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample (Bessel-corrected) standard deviation ignoring NaN rewards; NaN where fewer than two remain."""
    mean = _nanmean(x, dim)
    var = _nanmean((x - mean) ** 2, dim)
    count = (~torch.isnan(x)).sum() if dim is None else (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.where(count > 1, var * count / (count - 1), torch.full_like(var, float("nan")))
    return var.sqrt()


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each completion's reward minus its prompt group's mean, optionally divided by a standard deviation.

    ``rewards`` is ``[prompts * num_generations]``, prompt-major (the G completions of one prompt are adjacent);
    pass the rewards of the whole generation batch (all ranks), since each group's statistics need all of it.
    ``scale_rewards``: ``group`` divides by each group's std, ``batch`` by the whole batch's std (PPO-Lite),
    ``none`` not at all (Dr. GRPO); the std is the sample std plus 1e-4. A NaN reward (an unscorable completion)
    is left out of the means and stds and gets advantage 0.

    Stats: ``zero_std`` a bool per completion, True where its group's rewards are all equal (such groups carry
    no signal; a recipe may drop them); ``frac_reward_zero_std`` the share of such groups (a 0-dim tensor; TRL
    logs the same except under ``batch``, where it reports whether the whole batch's rewards are all equal);
    ``metrics`` the loggable floats, ``{"frac_reward_zero_std": ...}``.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards: {scale_rewards!r} not among {list(SCALE_REWARDS)}")
    if num_generations < 1 or rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"num_generations: {rewards.numel()} reward(s) do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = _nanmean(grouped, dim=1).expand_as(grouped).reshape(-1)
    if num_generations > 1:
        group_std = _nanstd(grouped, dim=1).expand_as(grouped).reshape(-1)
    else:  # one completion per prompt: no spread to measure
        group_std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale_rewards == "group":
        advantages = advantages / (group_std + STD_EPSILON)
    elif scale_rewards == "batch":
        batch_std = _nanstd(rewards) if rewards.numel() > 1 else rewards.new_zeros(())
        advantages = advantages / (batch_std + STD_EPSILON)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    zero_std = torch.isclose(group_std, torch.zeros_like(group_std))
    frac = zero_std.view(-1, num_generations)[:, 0].float().mean()
    stats = {"zero_std": zero_std, "frac_reward_zero_std": frac, "metrics": {"frac_reward_zero_std": frac.item()}}
    return advantages, stats


def mask_truncated(completion_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the rows of completions cut off at the length limit, so they are not scored as finished answers (DAPO).

    Their sequences still count in ``num_sequences`` (as TRL's ``grpo`` mean does); their tokens leave ``num_tokens``.
    """
    return completion_mask * (~truncated.bool()).unsqueeze(1).to(completion_mask.dtype)


class PolicyGradientLoss:
    """``__call__(per_token_logps, old_per_token_logps, advantages, completion_mask, ref_per_token_logps, *,
    num_sequences, num_tokens)`` -> (loss, metrics); see the module docstring.

    ``use_bias_correction_kl`` (TRL's default, on) multiplies the per-token KL by the importance ratio, which makes
    its gradient the unbiased reverse-KL gradient even on-policy, where the ratio is 1 but differentiable.
    """

    def __init__(
        self,
        loss_type: str = "dapo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        importance_sampling_level: str = "token",
        max_completion_length: int | None = None,
        delta: float | None = None,
        use_bias_correction_kl: bool = True,
    ) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_fn.loss_type: {loss_type!r} not among {list(LOSS_TYPES)}")
        if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"loss_fn.importance_sampling_level: {importance_sampling_level!r} not among "
                             f"{list(IMPORTANCE_SAMPLING_LEVELS)}")
        epsilon_high = epsilon if epsilon_high is None else epsilon_high
        if not epsilon >= 0:
            raise ValueError(f"loss_fn.epsilon: must be >= 0, got {epsilon!r}")
        if not epsilon_high >= 0:
            raise ValueError(f"loss_fn.epsilon_high: must be >= 0, got {epsilon_high!r}")
        if not beta >= 0:
            raise ValueError(f"loss_fn.beta: must be >= 0, got {beta!r}")
        if delta is not None and not delta > 0:
            raise ValueError(f"loss_fn.delta: must be > 0 (or None), got {delta!r}")
        if loss_type == "dr_grpo" and (max_completion_length is None or not max_completion_length > 0):
            raise ValueError("loss_fn.max_completion_length: dr_grpo needs a positive value, "
                             f"got {max_completion_length!r}")
        if importance_sampling_level == "sequence" and loss_type != "grpo":
            # TRL warns and runs it: each sequence's loss is counted once per token, weighting it by its length.
            logger.warning("loss_fn: importance_sampling_level='sequence' with loss_type=%r weights each sequence by "
                           "its length; GSPO as published is loss_type='grpo'", loss_type)
        self.loss_type, self.level = loss_type, importance_sampling_level
        self.epsilon_low, self.epsilon_high = float(epsilon), float(epsilon_high)
        self.beta, self.delta = float(beta), None if delta is None else float(delta)
        self.max_completion_length = max_completion_length
        self.use_bias_correction_kl = bool(use_bias_correction_kl)

    @property
    def needs_reference(self) -> bool:
        """Whether the reference model's per-token log-probabilities are needed (only for the KL term)."""
        return self.beta != 0.0

    def __call__(
        self,
        per_token_logps: torch.Tensor,
        old_per_token_logps: torch.Tensor | None,
        advantages: torch.Tensor,
        completion_mask: torch.Tensor,
        ref_per_token_logps: torch.Tensor | None = None,
        *,
        num_sequences: int | torch.Tensor,
        num_tokens: int | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the step's loss, and its metrics as detached 0-dim sums.

        ``per_token_logps``, ``old_per_token_logps`` (the sampling policy's; None means on-policy, ratio 1),
        ``ref_per_token_logps`` and ``completion_mask`` are ``[B, T]``; ``advantages`` is ``[B]``.
        ``num_sequences`` / ``num_tokens``: the sequences and mask-1 tokens of the whole optimizer step.

        Metrics: for each name below, ``metrics[name]`` is this micro-batch's sum and ``metrics[name + "/count"]``
        what it is a sum over. Add both over micro-batches and ranks, then ``finish`` divides: that is TRL's logged
        value when the step is one micro-batch (TRL averages per-micro-batch means otherwise).

        * ``kl`` (only when ``beta > 0``): mean over completion tokens of the k3 estimate
          ``exp(ref - logp) - (ref - logp) - 1``, times the importance ratio when ``use_bias_correction_kl``.
        * ``clip_ratio/low_mean``: share of completion tokens (of sequences, at sequence level) whose ratio is
          below ``1 - epsilon`` with a negative advantage: the lower clip is active and the gradient is cut.
        * ``clip_ratio/high_mean``: likewise above ``1 + epsilon_high`` with a positive advantage (the ratio
          after the ``delta`` cap, as TRL).
        * ``clip_ratio/region_mean``: share where either holds.
        """
        if self.needs_reference and ref_per_token_logps is None:
            raise ValueError(f"loss_fn: beta={self.beta} needs the reference model's per-token log-probabilities")
        # at least fp32: bf16 cannot count past 256 tokens exactly
        mask = completion_mask.to(torch.promote_types(per_token_logps.dtype, torch.float32))
        adv = advantages.unsqueeze(1)  # [B, 1]: one advantage per sequence
        old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
        log_ratio = per_token_logps - old
        seq_tokens = mask.sum(-1)
        if self.level == "sequence":
            log_ratio = ((log_ratio * mask).sum(-1) / seq_tokens.clamp(min=1.0)).unsqueeze(-1)
        importance = torch.exp(log_ratio)  # [B, T] or [B, 1]
        clipped = torch.clamp(importance, 1 - self.epsilon_low, 1 + self.epsilon_high)
        ratio = importance if self.delta is None else torch.clamp(importance, max=self.delta)
        per_token_loss = -torch.min(ratio * adv, clipped * adv)
        per_token_kl = None
        if self.needs_reference:
            diff = ref_per_token_logps - per_token_logps
            per_token_kl = torch.exp(diff) - diff - 1
            if self.use_bias_correction_kl:
                per_token_kl = per_token_kl * importance
            per_token_loss = per_token_loss + self.beta * per_token_kl

        masked = per_token_loss * mask  # a [B, 1] sequence loss broadcasts onto its tokens
        if self.loss_type == "grpo":
            loss = (masked.sum(-1) / seq_tokens.clamp(min=1.0)).sum() / _count(num_sequences, mask)
        elif self.loss_type == "dr_grpo":
            loss = masked.sum() / (_count(num_sequences, mask) * self.max_completion_length)
        else:  # bnpo, dapo
            loss = masked.sum() / _count(num_tokens, mask)
        return loss, self._metrics(ratio.detach(), adv, mask, per_token_kl)

    @staticmethod
    def finish(reduced: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        """The step's metric means from sums added over micro-batches and ranks: each ``name`` with a
        ``name/count`` partner is divided by it (at least 1); other entries (the summed loss) pass through."""
        counts = {k[: -len(COUNT)] for k in reduced if k.endswith(COUNT)}
        out = {}
        for name, value in reduced.items():
            if name.endswith(COUNT):
                continue
            value = float(value)
            out[name] = value / max(float(reduced[name + COUNT]), 1.0) if name in counts else value
        return out

    def _metrics(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                 per_token_kl: torch.Tensor | None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tokens = mask.sum()
            metrics: dict[str, torch.Tensor] = {}

            def share(name: str, x: torch.Tensor, sequence_level: bool) -> None:
                if sequence_level:  # one value per sequence, every sequence counts
                    metrics[name], metrics[name + COUNT] = x.sum(), mask.new_tensor(float(x.shape[0]))
                else:
                    metrics[name], metrics[name + COUNT] = (x * mask).sum(), tokens

            low = (ratio < 1 - self.epsilon_low) & (adv < 0)
            high = (ratio > 1 + self.epsilon_high) & (adv > 0)
            per_sequence = self.level == "sequence"
            share("clip_ratio/low_mean", low.to(mask.dtype), per_sequence)
            share("clip_ratio/high_mean", high.to(mask.dtype), per_sequence)
            share("clip_ratio/region_mean", (low | high).to(mask.dtype), per_sequence)
            if per_token_kl is not None:
                share("kl", per_token_kl.detach(), False)
        return metrics


def _count(n: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A step-global count as a divisor, at least 1 (as TRL's clamps) so an empty step gives 0, not NaN."""
    if isinstance(n, torch.Tensor):
        return n.to(device=like.device, dtype=like.dtype).clamp(min=1.0)
    return float(max(int(n), 1))
