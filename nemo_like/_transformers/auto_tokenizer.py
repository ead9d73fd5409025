"""The import path recipes name for the tokenizer loader (``..._transformers.auto_tokenizer.NeMoAutoTokenizer``)."""

from nemo_like._transformers.tokenizer import NeMoAutoTokenizer, build_tokenizer

__all__ = ["NeMoAutoTokenizer", "build_tokenizer"]
