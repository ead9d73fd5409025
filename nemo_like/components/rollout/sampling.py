"""What a rollout asks for and what it returns, independent of the engine that generates.

GRPO samples a group of completions per prompt and later recomputes their log-probabilities
under the policy being trained; the ratio of the two is the importance weight. Keeping the
request (``SamplingParams``), the result (``Rollout``) and the engine contract (``Generator``)
apart lets a recipe swap the Hugging Face loop for another backend without touching the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["SAMPLERS", "Generator", "Rollout", "SamplingParams"]

SAMPLERS = ("multinomial", "inverse_cdf")


@dataclass
class SamplingParams:
    """How to sample, with the meanings of ``transformers``' ``generate``.

    ``top_k`` of ``None`` or ``0`` keeps every token, as in ``generate``; ``top_p`` of ``1.0`` likewise.
    ``temperature`` also divides the logits of the returned log-probs when ``do_sample`` is false, so
    the numbers a trainer compares against stay those of one distribution.

    ``sampler``: how a token is drawn from the filtered distribution. ``multinomial`` is ``generate``'s
    ``torch.multinomial``: under one seed the same tokens as ``generate``, at the cost of one random
    number per vocabulary entry and row each step (a quarter of the sampling time of a 49K vocabulary
    on a CPU). ``inverse_cdf`` draws one uniform number per row and finds it in the cumulative
    probabilities (float64): the same distribution, other tokens, and a fraction of the cost.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_completion_length: int = 256
    do_sample: bool = True
    sampler: str = "multinomial"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"SamplingParams.sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"SamplingParams.temperature must be a number, got {self.temperature!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"SamplingParams.temperature must be a finite number > 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)):
            raise ValueError(f"SamplingParams.top_p must be a number, got {self.top_p!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        top_k = self.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"SamplingParams.top_k must be None or an integer >= 0 (0 = off), got {self.top_k!r}")
        if (isinstance(self.max_completion_length, bool) or not isinstance(self.max_completion_length, int)
                or self.max_completion_length < 1):
            raise ValueError(
                f"SamplingParams.max_completion_length must be an integer >= 1, got {self.max_completion_length!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"SamplingParams.do_sample must be True or False, got {self.do_sample!r}")
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)


@dataclass
class Rollout:
    """The completions of a batch of prompts, ``num_generations`` per prompt, prompt-major.

    Rows ``i * G .. i * G + G - 1`` belong to prompt ``i``. A completion that stopped ends with its
    EOS token and carries no padding. ``logprobs[r][t]`` is ``log_softmax(logits / temperature)`` of
    token ``t`` of row ``r``, before top-k/top-p: the sampling distribution a trainer recomputes for
    its importance ratio (as TRL's GRPOTrainer does).
    """

    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    truncated: list[bool]  # reached max_completion_length without an EOS token
    seconds: float
    generated_tokens: int
    threads: int | None = None  # the intra-op threads a CPU decoding ran on (None: not counted)

    @property
    def tokens_per_second(self) -> float:
        """Throughput of the call; 0.0 when it took no measurable time."""
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


@runtime_checkable
class Generator(Protocol):
    """An engine that samples ``num_generations`` completions for each tokenized prompt."""

    def generate(self, prompt_ids: list[list[int]], num_generations: int, sampling: SamplingParams) -> Rollout:
        """``num_generations`` completions per prompt, prompt-major, as a ``Rollout``."""
