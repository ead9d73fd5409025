"""Chat-template text of many conversations (and of their prefixes), as ``apply_chat_template`` renders it.

Why: supervised chat data renders every prefix of a conversation (to find where each answer
starts), and ``apply_chat_template`` copies and cleans the messages again on every call,
about half of its time. Here each message is cleaned once, by the same functions
transformers uses (a message of plain string fields by the one step they amount to for it),
and the compiled template renders the prefixes. The first texts are
compared with ``apply_chat_template``'s; on any difference (or when those functions are not
there) every call goes through ``apply_chat_template`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:  # transformers' own cleaning steps; without them the reference path is used
    from transformers.utils.chat_template_utils import (
        _alias_reasoning_fields,
        _compile_jinja_template,
        _normalize_chat_messages,
        _plain_template_data,
    )
except ImportError:  # pragma: no cover - depends on the transformers release
    _compile_jinja_template = None


_REASONING_KEYS = frozenset({"reasoning_content", "thinking", "reasoning"})


def _only_strings(message: Any) -> bool:
    """A plain dict of string (or None) fields, no reasoning text: the common ``{role, content}``. Cleaning it only
    drops its None fields; the functions above would rebuild the same dict, more slowly."""
    return type(message) is dict and all(
        type(k) is str and (v is None or (type(v) is str and k not in _REASONING_KEYS)) for k, v in message.items()
    )


def _plain_strings(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v is not None}


class ChatRenderer:
    """``render(conversations, tools, add_generation_prompt)`` -> one text per conversation."""

    def __init__(self, tokenizer: Any, chat_template: str) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        direct = _compile_jinja_template is not None and isinstance(chat_template, str)
        self._direct: bool | None = None if direct else False
        self._compiled: Any = None
        self._kwargs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_compiled": None}  # compiled on first use in a worker process

    def reference(self, conversations: Sequence[Sequence[dict[str, Any]]], tools: list[Any] | None,
                  add_generation_prompt: bool) -> list[str]:
        return list(self.tokenizer.apply_chat_template(
            [list(c) for c in conversations], tools=tools, tokenize=False,
            chat_template=self.chat_template if isinstance(self.chat_template, str) else None,
            add_generation_prompt=add_generation_prompt))

    def render(self, conversations: Sequence[Sequence[dict[str, Any]]], tools: list[Any] | None = None,
               add_generation_prompt: bool = False, cleaned: dict[int, dict[str, Any]] | None = None) -> list[str]:
        """``cleaned``: a dict the caller keeps while its message objects live, to clean each once over calls."""
        if not conversations:
            return []
        if self._direct is False or (tools and not all(isinstance(t, dict) for t in tools)):
            return self.reference(conversations, tools, add_generation_prompt)
        if self._compiled is None:
            self._compiled = _compile_jinja_template(self.chat_template)
            self._kwargs = _plain_template_data(dict(self.tokenizer.special_tokens_map))
        if cleaned is None:
            cleaned = {}  # prefixes share message objects: each is cleaned once

        def clean(message: dict[str, Any]) -> dict[str, Any]:
            if type(message) is dict and len(message) == 2 and type(message.get("role")) is str and type(
                    message.get("content")) is str:
                return message  # {role, content}: cleaning gives the same dict
            key = id(message)
            if key not in cleaned:
                cleaned[key] = (_plain_strings(message) if _only_strings(message) else
                                _alias_reasoning_fields(_plain_template_data(_normalize_chat_messages([message])))[0])
            return cleaned[key]

        schemas = _plain_template_data(tools) if tools is not None else None
        texts = [self._compiled.render(messages=[clean(m) for m in conversation], tools=schemas, documents=None,
                                       add_generation_prompt=add_generation_prompt, **self._kwargs)
                 for conversation in conversations]
        if self._direct is None:  # the first call: agree with apply_chat_template, or leave the work to it
            self._direct = texts[:2] == self.reference(conversations[:2], tools, add_generation_prompt)
            if not self._direct:
                return self.reference(conversations, tools, add_generation_prompt)
        return texts
