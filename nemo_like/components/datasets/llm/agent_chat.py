"""Multi-turn agent traces (tool definitions, tool calls, tool results) -> chat tokens, loss on assistant turns.

Three row shapes are read, each with an optional ``tools`` list (or its JSON text):

* chatml ``messages`` with roles ``system / user / assistant / tool_call / tool_response``; a
  ``tool_call`` content is ``{"name", "arguments"}`` (or its JSON text);
* ShareGPT ``conversations`` of ``{from, value}`` with speakers ``human / gpt / function_call /
  observation`` (and ``system``, ``tool``);
* OpenAI ``messages`` with assistant ``tool_calls`` (and ``reasoning_content``) and ``tool``
  messages carrying ``tool_call_id``.

All become OpenAI messages: consecutive tool calls are one assistant message with parallel
``tool_calls`` (joined to the assistant text just before them, when it has no calls of its
own, as a model emits text then calls in one turn), and the tool results that follow answer
those calls in order. The chat template renders the conversation; user, system and tool
tokens carry no loss (see :class:`ChatDataset`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError, is_local_data_path
from nemo_like.components.datasets.llm.batch_encoder import RowIds
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset, inline_tools, parse_json_field
from nemo_like.components.datasets.local_splits import limit_within_split, resolve_local_split
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces

AGENT_ROLES = ("system", "user", "assistant", "tool_call", "tool_response", "tool")
SPEAKERS = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "tool_call", "tool_call": "tool_call", "observation": "tool_response",
    "tool_response": "tool_response", "tool": "tool_response",
}


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {},
                                                                   ensure_ascii=False)


def sharegpt_to_chatml(where: str, turns: Any) -> list[dict[str, Any]]:
    """ShareGPT turns as chatml ``{role, content}`` messages (a ``reasoning_content`` field is kept)."""
    if not isinstance(turns, list):
        raise DatasetError(f"{where}: column 'conversations' must be a list of {{from, value}} turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in SPEAKERS:
            said = turn.get("from") if isinstance(turn, dict) else turn
            raise DatasetError(f"{where}: conversations[{i}]: unknown speaker {said!r}; use one of {sorted(SPEAKERS)}")
        message = {"role": SPEAKERS[turn["from"]], "content": turn.get("value", "")}
        if turn.get("reasoning_content"):
            message["reasoning_content"] = _as_text(turn["reasoning_content"])
        out.append(message)
    return out


def to_openai_messages(where: str, messages: list[Any], example_id: Any = None) -> list[dict[str, Any]]:
    """chatml agent messages (or OpenAI ones) as OpenAI messages, tool calls merged and paired with results."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of the latest group of calls, for the results that follow
    counter = 0
    prefix = f"call_{example_id}" if example_id is not None else "call"

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}_{counter - 1}"

    i = 0
    while i < len(messages):
        message = messages[i]
        role = message.get("role") if isinstance(message, dict) else None
        if role not in AGENT_ROLES:
            raise DatasetError(f"{where}: message {i}: unknown role {role!r}; use one of {list(AGENT_ROLES)}")
        if role == "tool_call":
            calls, pending = [], []
            while i < len(messages) and messages[i].get("role") == "tool_call":
                call = parse_json_field(where, f"message {i} content", messages[i].get("content") or "{}")
                if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
                    raise DatasetError(f"{where}: message {i}: a tool_call needs a 'name'")
                pending.append(new_id())
                calls.append({"id": pending[-1], "type": "function",
                              "function": {"name": call["name"], "arguments": _arguments_text(call.get("arguments"))}})
                i += 1
            if out and out[-1]["role"] == "assistant" and "tool_calls" not in out[-1]:
                out[-1]["tool_calls"] = calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        if role in ("tool_response", "tool"):
            k = 0
            while i < len(messages) and messages[i].get("role") in ("tool_response", "tool"):
                given = messages[i].get("tool_call_id")
                call_id = given if isinstance(given, str) and given else (
                    pending[k] if k < len(pending) else f"{prefix}_response_{counter}_{k}")
                result = {"role": "tool", "content": _as_text(messages[i].get("content")), "tool_call_id": call_id}
                if isinstance(messages[i].get("name"), str) and messages[i]["name"]:
                    result["name"] = messages[i]["name"]
                out.append(result)
                i += 1
                k += 1
            continue
        pending = []
        converted: dict[str, Any] = {"role": role, "content": _as_text(message.get("content"))}
        if role == "assistant":
            if message.get("reasoning_content"):
                converted["reasoning_content"] = _as_text(message["reasoning_content"])
            if message.get("tool_calls") is not None:
                raw = message["tool_calls"]
                if not isinstance(raw, list):
                    raise DatasetError(f"{where}: message {i}: 'tool_calls' must be a list")
                calls = []
                for call in raw:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                        raise DatasetError(f"{where}: message {i}: a tool call needs a function 'name'")
                    given = call.get("id")
                    if isinstance(given, str) and given:
                        call_id, counter = given, counter + 1
                    else:
                        call_id = new_id()
                    pending.append(call_id)
                    calls.append({"id": call_id, "type": "function",
                                  "function": {"name": fn["name"], "arguments": _arguments_text(fn.get("arguments"))}})
                converted["tool_calls"] = calls
        out.append(converted)
        i += 1
    return out


def trim_after_last_assistant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to its last assistant message (an unfinished exchange after it has no target)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return messages[: last + 1] if last >= 0 else messages


def drop_history_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every assistant message but the last without its ``reasoning_content`` (a model never sees old thinking)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return [{k: v for k, v in m.items() if k != "reasoning_content"} if m.get("role") == "assistant" and i != last
            else m for i, m in enumerate(messages)]


class AgentChatDataset(ChatDataset):
    """:class:`ChatDataset` over agent traces, with the trace options of :func:`make_agent_chat_dataset`."""

    def __init__(self, *args: Any, filter_no_assistant: bool = False, filter_overlong: bool = False,
                 trim_incomplete_last_turn: bool = False, drop_history_reasoning_content: bool = False,
                 truncate_history: bool = False, **kwargs: Any) -> None:
        self.filter_no_assistant = bool(filter_no_assistant)
        self.filter_overlong = bool(filter_overlong)
        self.trim_incomplete_last_turn = bool(trim_incomplete_last_turn)
        self.drop_history_reasoning_content = bool(drop_history_reasoning_content)
        self.truncate_history = bool(truncate_history)
        super().__init__(*args, **kwargs)

    def _settings(self) -> dict[str, Any] | None:
        return {**super()._settings(), "filter_no_assistant": self.filter_no_assistant,
                "filter_overlong": self.filter_overlong, "trim_incomplete_last_turn": self.trim_incomplete_last_turn,
                "drop_history_reasoning_content": self.drop_history_reasoning_content,
                "truncate_history": self.truncate_history}

    def conversation(self, where: str, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
        tools = row.get("tools")
        if isinstance(tools, str) and not tools.strip():
            tools = None
        tools = parse_json_field(where, "tools", tools)
        if tools is not None and not isinstance(tools, list):
            raise DatasetError(f"{where}: column 'tools' must be a list of tool schemas (or its JSON text)")
        if row.get("messages") is not None:
            raw = row["messages"]
            if not isinstance(raw, list):
                raise DatasetError(f"{where}: column 'messages' must be a list of messages")
        elif row.get("conversations") is not None:
            raw = sharegpt_to_chatml(where, row["conversations"])
        else:
            raise DatasetError(f"{where}: no 'messages' (or ShareGPT 'conversations'); the row has {sorted(row)}")
        if self.trim_incomplete_last_turn:
            raw = trim_after_last_assistant(raw)
        messages = to_openai_messages(where, raw, row.get("id"))
        if self.drop_history_reasoning_content:
            messages = drop_history_reasoning(messages)
        return messages, tools or None

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        messages, tools = self.conversation(where, row)
        if self.filter_no_assistant and not any(m["role"] == "assistant" for m in messages):
            return Pieces([], [], None)  # no target: the row is left out
        messages = self._checked(where, messages)
        if (tools or any(m.get("tool_calls") for m in messages)) and not self._template_renders_tools():
            messages, tools = inline_tools(messages, tools), None
        if self.truncate_history and self.row_limit.limit is not None:
            messages = self._fit_history(where, messages, tools)
        segments = self._segments(where, messages, tools)
        return Pieces([text for text, _ in segments], [False] * len(segments), [flag for _, flag in segments])

    def _inputs(self, where: str, messages: list[dict[str, Any]], tools: list[Any] | None) -> int:
        text = self._render(where, [messages], tools)[0]
        return len(self._ids(text, False)) - 1

    def _fit_history(self, where: str, messages: list[dict[str, Any]], tools: list[Any] | None) -> list[dict[str, Any]]:
        """Drop the oldest exchanges (cut where a user message starts) until the conversation fits the limit.

        Leading system messages, the tools and the last exchange stay; when even those do not
        fit, they are returned and the length rule (truncation, or an error) applies.
        """
        limit = self.row_limit.limit
        if self._inputs(where, messages, tools) <= limit:
            return messages
        n = 0
        while n < len(messages) and messages[n]["role"] == "system":
            n += 1
        system, history = messages[:n], messages[n:]
        starts = [i for i, m in enumerate(history) if m["role"] == "user"]
        for start in starts:
            kept = system + history[start:]
            if not any(m["role"] == "assistant" for m in kept):
                break
            if self._inputs(where, kept, tools) <= limit:
                return kept
        last = [s for s in starts if any(m["role"] == "assistant" for m in history[s:])]
        return system + history[last[-1]:] if last else messages

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]] | RowIds) -> dict[str, Any] | None:
        if pieces.state is None:
            return None
        tokens = len(encoded.ids) if isinstance(encoded, RowIds) else sum(len(piece) for piece in encoded)
        if self.filter_overlong and tokens - 1 > self.seq_length:
            return None
        return super()._assemble(where, pieces, encoded)


def make_agent_chat_dataset(
    tokenizer: Any,
    *,
    dataset_name: str | Sequence[str] | None = None,
    path: str | Sequence[str] | None = None,
    split: str = "train",
    revision: str | None = None,
    filter_no_assistant: bool = False,
    filter_overlong: bool = False,
    trim_incomplete_last_turn: bool = False,
    chat_template: str | None = None,
    seq_length: int | None = None,
    limit_dataset_samples: int | None = None,
    padding: str | bool = False,
    truncation: str | bool = False,
    mask_reasoning_content: bool = False,
    train_on_last_turn_only: bool = False,
    drop_history_reasoning_content: bool = False,
    truncate_history: bool = False,
    max_length: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> AgentChatDataset:
    """Agent traces from ``dataset_name`` (a hub id, or a local file / list / folder of split files, sliced
    by ``split``) or ``path`` (local JSON / JSONL files, read whole); exactly one of them.

    ``filter_no_assistant`` leaves out rows without an assistant message; ``trim_incomplete_last_turn``
    drops what follows the last assistant message; ``truncate_history`` drops the oldest exchanges
    until the row fits ``seq_length`` (else the model's context), keeping system messages, tools and
    the last exchange; ``filter_overlong`` (needs ``seq_length``) leaves out rows that still do not
    fit. A row over the limit otherwise is an error naming it, or is cut with ``truncation`` (from
    the tokenizer's ``truncation_side``). ``mask_reasoning_content`` keeps thinking traces out of the
    loss, ``drop_history_reasoning_content`` out of the text for all but the last assistant turn;
    ``train_on_last_turn_only`` supervises the last assistant turn only. ``padding: max_length``
    pads to ``seq_length``. ``revision`` is for hub ids, which this library reads without one: a
    hub id with a revision is refused; with a local copy it names where the copy came from.
    """
    if (dataset_name is None) == (path is None):
        raise DatasetError("dataset: give exactly one of dataset_name (a hub id or local copy) and path "
                           "(local JSON/JSONL files)")
    if filter_overlong and seq_length is None:
        raise DatasetError("dataset.filter_overlong: needs dataset.seq_length")
    if dataset_name is not None:
        limit = limit_within_split(split, limit_dataset_samples)
        source = resolve_local_split(dataset_name, split)
        if revision is not None and source == dataset_name and not is_local_data_path(dataset_name):
            raise DatasetError(f"dataset.revision: hub revisions are not read here; download {dataset_name!r} at "
                               f"revision {revision!r} and give its local path as dataset_name")
    else:
        limit = limit_within_split(None, limit_dataset_samples)
        source, split = (path if isinstance(path, str) else list(path)), None
    return AgentChatDataset(
        source, tokenizer, split=split, seq_length=seq_length,
        padding="max_length" if padding == "max_length" else "do_not_pad", truncation=truncation,
        chat_template=chat_template, mask_history=train_on_last_turn_only, limit_dataset_samples=limit,
        mask_reasoning_content=mask_reasoning_content, max_length=max_length, num_proc=num_proc, cache_dir=cache_dir,
        filter_no_assistant=filter_no_assistant, filter_overlong=filter_overlong,
        trim_incomplete_last_turn=trim_incomplete_last_turn,
        drop_history_reasoning_content=drop_history_reasoning_content, truncate_history=truncate_history,
    )
