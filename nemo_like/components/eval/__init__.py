"""Evaluation helpers: generation-based exact match for instruction tasks."""

from nemo_like.components.eval.exact_match import (
    build_prompt,
    encode_prompt,
    generation_exact_match,
    load_jsonl_rows,
)

__all__ = ["build_prompt", "encode_prompt", "generation_exact_match", "load_jsonl_rows"]
