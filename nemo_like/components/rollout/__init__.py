"""Rollout engines: sample groups of completions for RL methods such as GRPO."""

from nemo_like.components.rollout.hf_generator import HFGenerator, top_k_filter, top_p_filter
from nemo_like.components.rollout.sampling import Generator, Rollout, SamplingParams

__all__ = ["Generator", "HFGenerator", "Rollout", "SamplingParams", "top_k_filter", "top_p_filter"]
