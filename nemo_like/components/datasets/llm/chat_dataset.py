"""Conversations (OpenAI ``messages`` or ShareGPT ``conversations``) -> pre-shifted tokens, loss on assistant turns.

How the loss mask is found: the chat template renders the conversation one message
at a time, and each rendering must extend the previous one (for templates shown to do so,
one render of the whole conversation stands for those; see ``TurnSplit``). The text an assistant
message adds after the generation prompt (``<|im_start|>assistant\\n`` in ChatML) is its
content plus the end-of-turn marker; those tokens carry labels, everything else -100.
Segments are tokenized one by one, so the first assistant token is tokenized exactly as
it is generated after the prompt at inference time. Templates that drop earlier turns'
text (some reasoning templates do) break this and are reported, naming the row.

With ``mask_reasoning_content`` an assistant message's ``reasoning_content`` (its thinking
trace, rendered by templates that show it) stays in the text but carries no loss: the turn
is rendered once more with the trace emptied, and the characters that differ are the trace.
``shuffle_seed`` shuffles the whole split before a split slice (``train[:256]``) and
``limit_dataset_samples`` take rows, so two slices of one seed are disjoint random subsets.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from nemo_like.components.datasets import arrow_rows
from nemo_like.components.datasets.json_rows import DatasetError, slice_split
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import (
    is_padding_to_max_length,
    is_truncation_on,
    pad_token_id_of,
)
from nemo_like.components.datasets.local_splits import split_name
from nemo_like.components.datasets.llm.batch_encoder import RowIds
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset
from nemo_like.components.datasets.llm.turn_split import row_shape

logger = logging.getLogger("nemo_like")

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names -> OpenAI roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "function_call": "assistant",
    "observation": "tool", "tool": "tool", "function_response": "tool", "function": "tool",
}
_PROBE_TOOL, _PROBE_CALL = "nemo_like_probe_tool", "nemo_like_probe_call"


def _text(where: str, index: int, message: dict[str, Any]) -> str:
    """A message's content as one string; a list of OpenAI text parts is joined.

    ``content`` is required; only an assistant message that makes tool calls may leave it
    out or null (the OpenAI format does).
    """
    if "content" not in message or message["content"] is None:
        if message["role"] == "assistant" and message.get("tool_calls"):
            return ""
        said = "is null" if "content" in message else "is missing"
        raise DatasetError(f"{where}: message {index} ({message['role']}): 'content' {said}")
    content = message["content"]
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise DatasetError(f"{where}: message {index} ({message['role']}): 'content' must be a string (or a list of "
                       f"{{type: text, text}} parts), got {type(content).__name__}")


def _call_with_object_arguments(where: str, index: int, call: Any) -> dict[str, Any]:
    """OpenAI sends ``arguments`` as a JSON string; chat templates expect an object (they JSON-encode it)."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or "name" not in fn:
        raise DatasetError(f"{where}: message {index}: a tool call needs a function 'name'")
    arguments = parse_json_field(where, f"message {index} tool call arguments", fn.get("arguments", {}))
    return {"type": "function", "function": {"name": fn["name"], "arguments": arguments}}


def parse_json_field(where: str, name: str, value: Any) -> Any:
    """Fields such as ``tools`` often arrive as JSON strings; decode them, naming the row when they are not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: '{name}' is not valid JSON ({e.msg} at column {e.colno})") from None


def sharegpt_to_messages(where: str, turns: Any) -> list[dict[str, Any]]:
    """ShareGPT ``[{"from": "human", "value": ...}, ...]`` as OpenAI messages."""
    if not isinstance(turns, list):
        raise DatasetError(f"{where}: 'conversations' must be a list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DatasetError(f"{where}: conversations[{i}] needs a 'from' and a 'value'")
        speaker = str(turn["from"]).lower()
        if speaker not in SHAREGPT_ROLES:
            raise DatasetError(f"{where}: conversations[{i}]: unknown speaker {turn['from']!r}; "
                               f"use one of {sorted(SHAREGPT_ROLES)}")
        value = turn.get("value")
        if speaker == "function_call":
            call = parse_json_field(where, f"conversations[{i}].value", value)
            if not isinstance(call, dict) or "name" not in call:
                raise DatasetError(f"{where}: conversations[{i}]: a function_call value needs a 'name'")
            messages.append({"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}]})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return messages


def inline_tools(messages: list[dict[str, Any]], tools: list[Any] | None) -> list[dict[str, Any]]:
    """For templates that ignore ``tools`` / ``tool_calls``: put them into the text instead.

    The tool list goes into the system message and each call becomes a
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` line of the assistant's
    content, so that the model still sees (and learns) the calls.
    """
    out = copy.deepcopy(messages)
    for message in out:
        calls = message.pop("tool_calls", None)
        if not calls:
            continue
        lines = [message["content"]] if message.get("content") else []
        for call in calls:
            fn = call.get("function", call)
            arguments = fn.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            lines.append("<tool_call>" + json.dumps({"name": fn.get("name"), "arguments": arguments}) + "</tool_call>")
        message["content"] = "\n".join(lines)
    if tools:
        listing = "You can call these tools; answer with one <tool_call> line per call:\n" + "\n".join(
            json.dumps(t) for t in tools
        )
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{listing}" if out[0]["content"] else listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


@dataclass
class ShuffledRowSource(arrow_rows.RowSource):
    """Rows of the whole base split in a seeded random order, then the split's slice (``train[64:]``)."""

    seed: int = 0

    @classmethod
    def wrap(cls, source: arrow_rows.RowSource, seed: int) -> ShuffledRowSource:
        return cls(**{f.name: getattr(source, f.name) for f in fields(source)}, seed=int(seed))

    def load(self, scratch: Path) -> Any:
        split = self.split
        self.split = split_name(split)  # the whole base split: a hub loads it whole, a local file is not sliced
        try:
            whole = super().load(scratch)
        finally:
            self.split = split
        order = np.random.default_rng(self.seed).permutation(len(whole))
        span = slice_split(list(range(len(whole))), split)
        if not span:
            raise DatasetError(f"{self.path_or_dataset_id}: split {split!r} selects no rows")
        return whole.select(order[span].tolist())


def _not_turn_by_turn(where: str, index: int) -> DatasetError:
    return DatasetError(f"{where}: the chat template does not render this conversation turn by turn (message "
                        f"{index} changes the text before it), so assistant tokens cannot be located")


def reasoning_span(full: str, emptied: str) -> tuple[int, int] | None:
    """(start, end) of the characters of ``full`` that the render with an emptied trace lacks, or None."""
    p = 0
    while p < min(len(full), len(emptied)) and full[p] == emptied[p]:
        p += 1
    s = 0
    while s < min(len(full), len(emptied)) - p and full[-1 - s] == emptied[-1 - s]:
        s += 1
    return (p, len(full) - s) if len(full) - s > p else None


class ChatDataset(TokenizedDataset):
    """Chat rows with loss on assistant turns only (all of them, or the last with ``mask_history``).

    Rows hold OpenAI ``messages`` (roles system/user/assistant/tool; assistant
    ``tool_calls``; ``tools`` as a list or a JSON string) or ShareGPT ``conversations``
    (converted). The tokenizer's chat template renders them, or ``chat_template`` (a
    Jinja string or a path to a ``.jinja`` file). Each assistant turn's end-of-turn
    token is supervised even when the tokenizer pads with it. A bad row is an error
    naming its file and line, or is skipped and counted with ``skip_invalid_samples``; every
    message needs a known ``role`` and a string ``content`` (an assistant message with
    ``tool_calls`` may leave it null). A row longer than ``seq_length``, or without it than
    the model's context ``max_length`` (see ``context_limit``), is such an error, or is cut
    with ``truncation`` (the count is logged once).
    Items hold pre-shifted ``input_ids`` / ``labels`` / ``attention_mask`` lists. ``num_proc``
    processes tokenize (default: the machine's cores) into a token cache under ``cache_dir``
    (default ``$NEMO_LIKE_HOME/datasets``), which the next run maps instead.
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        tokenizer: Any,
        split: str | None = None,
        seq_length: int | None = None,
        padding: str | bool = "do_not_pad",
        truncation: str | bool = "do_not_truncate",
        chat_template: str | None = None,
        mask_history: bool = False,
        skip_invalid_samples: bool = False,
        limit_dataset_samples: int | None = None,
        start_of_turn_token: str | None = None,
        mask_reasoning_content: bool = False,
        shuffle_seed: int | None = None,
        max_length: int | None = None,
        num_proc: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        # start_of_turn_token is accepted for NeMo YAMLs; turns are found by rendering, not by a marker.
        del start_of_turn_token
        if shuffle_seed is not None and (isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)):
            raise DatasetError(f"dataset.shuffle_seed: expected an integer (or null), got {shuffle_seed!r}")
        self.mask_reasoning_content = bool(mask_reasoning_content)
        self.shuffle_seed = shuffle_seed
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        self.tokenizer = tokenizer
        self.chat_template = self._template(chat_template)
        self.seq_length = seq_length
        self.pad_to_seq_length = is_padding_to_max_length(padding)
        self.truncate = is_truncation_on(truncation)
        self.row_limit = RowLimit(tokenizer, max_length, seq_length, self.truncate, source=path_or_dataset_id)
        self.mask_history = mask_history
        self.pad_token_id = pad_token_id_of(tokenizer)
        self._renders_tools: bool | None = None
        self.skip_invalid_samples = skip_invalid_samples
        if self.mask_reasoning_content and "reasoning_content" not in self.chat_template:
            logger.warning("dataset.mask_reasoning_content: the chat template never shows 'reasoning_content', "
                           "so there is no reasoning text to mask (and traces are not trained on)")
        self._load_table(path_or_dataset_id, split, limit_dataset_samples, cache_dir, num_proc)

    def _row_source(self, path_or_dataset_id: str | Sequence[str], split: str | None) -> arrow_rows.RowSource:
        source = super()._row_source(path_or_dataset_id, split)
        return source if self.shuffle_seed is None else ShuffledRowSource.wrap(source, self.shuffle_seed)

    def _settings(self) -> dict[str, Any] | None:
        return {"chat_template": self.chat_template, "mask_history": self.mask_history,
                "skip_invalid_samples": self.skip_invalid_samples,
                "mask_reasoning_content": self.mask_reasoning_content, "shuffle_seed": self.shuffle_seed,
                "truncation_side": self._truncation_side()}

    def _truncation_side(self) -> str:
        """Which end a cut row loses: the tokenizer's ``truncation_side`` (``left`` keeps the conversation's end)."""
        return "left" if getattr(self.tokenizer, "truncation_side", "right") == "left" else "right"

    def _template(self, chat_template: str | None) -> str:
        template = chat_template
        if template and "{" not in template and os.path.isfile(os.path.expanduser(template)):
            with open(os.path.expanduser(template), encoding="utf-8") as f:
                template = f.read()
        template = template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise DatasetError("dataset: the tokenizer has no chat template; set dataset.chat_template")
        return template

    # ------------------------------------------------------------------ rows -> conversation
    def conversation(self, where: str, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The row's messages and tools; subclasses map other row shapes (see ``xlam``)."""
        if "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list):
                raise DatasetError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        elif "conversations" in row:
            messages = sharegpt_to_messages(where, row["conversations"])
            if row.get("system"):
                messages = [{"role": "system", "content": row["system"]}, *messages]
        else:
            raise DatasetError(f"{where}: no 'messages' (or ShareGPT 'conversations'); the row has {sorted(row)}")
        tools = parse_json_field(where, "tools", row.get("tools"))
        if tools is not None and not isinstance(tools, list):
            raise DatasetError(f"{where}: 'tools' must be a list of tool schemas")
        return messages, tools or None

    def _checked(self, where: str, messages: list[Any]) -> list[dict[str, Any]]:
        checked = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise DatasetError(f"{where}: message {i} must be an object with a 'role' and a 'content', "
                                   f"got {type(message).__name__}")
            if "role" not in message:
                raise DatasetError(f"{where}: message {i}: 'role' is missing; the message has {sorted(message)}")
            role = message["role"]
            if not isinstance(role, str) or role not in ROLES:
                raise DatasetError(f"{where}: message {i}: unknown role {role!r}; use one of {list(ROLES)}")
            clean = dict(message)
            clean["content"] = _text(where, i, message)
            if clean.get("tool_calls") is None:
                clean.pop("tool_calls", None)
            elif clean["role"] != "assistant" or not isinstance(clean["tool_calls"], list):
                raise DatasetError(f"{where}: message {i}: 'tool_calls' must be a list on an assistant message")
            else:
                clean["tool_calls"] = [_call_with_object_arguments(where, i, call) for call in clean["tool_calls"]]
            checked.append(clean)
        if not any(m["role"] == "assistant" for m in checked):
            raise DatasetError(f"{where}: the conversation has no assistant message to learn from")
        return checked

    # ------------------------------------------------------------------ rendering
    def _render(self, where: str, prefixes: list[list[dict[str, Any]]], tools: list[Any] | None,
                add_generation_prompt: bool = False, cleaned: dict[int, Any] | None = None) -> list[str]:
        """The rendered text of each of a conversation's prefixes (one template call for all of them);
        ``cleaned``: the renderer's cleaned messages, kept over the calls for one conversation."""
        nonempty = [p for p in prefixes if p]
        try:
            texts = iter(self._renderer(self.chat_template).render(nonempty, tools, add_generation_prompt, cleaned))
        except Exception as err:  # jinja raises its own errors, templates call raise_exception
            raise DatasetError(f"{where}: the chat template rejects this conversation "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        return [next(texts) if p else "" for p in prefixes]

    def _template_renders_tools(self) -> bool:
        """Whether the template shows ``tools`` and ``tool_calls``; if not they are inlined as text."""
        if self._renders_tools is None:
            tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "", "parameters": {}}}
            call = {"type": "function", "function": {"name": _PROBE_CALL, "arguments": {}}}
            probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
            try:
                text = self.tokenizer.apply_chat_template(probe, tools=[tool], chat_template=self.chat_template,
                                                          tokenize=False)
                self._renders_tools = _PROBE_TOOL in text and _PROBE_CALL in text
            except Exception:
                self._renders_tools = False
        return self._renders_tools

    def _segments(self, where: str, messages: list[dict[str, Any]], tools: list[Any] | None) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, supervised) pieces, checked to extend one another."""
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        thinking = [i for i in answers if self.mask_reasoning_content and messages[i].get("reasoning_content")]
        cleaned: dict[int, Any] = {}
        shape = None if thinking else row_shape(messages, tools)
        if self._turns.trusts(shape):
            try:
                (full,) = self._renderer(self.chat_template).render([messages], tools, cleaned=cleaned)
            except Exception:  # the exact way says what is wrong
                full = None
            found = None if full is None else self._turns.bounds(full, len(messages), answers, shape)
            if found is not None:
                return self._cut_at(where, messages, full, *found)
        before_answer, through = self._prefix_turns(where, messages, tools, answers, cleaned)
        self._turns.observe(before_answer, through, shape)
        emptied = dict(zip(thinking, self._render(
            where, [messages[:i] + [{**messages[i], "reasoning_content": ""}] for i in thinking], tools))
            ) if thinking else {}
        return self._cut(where, messages, before_answer, through, emptied)

    def _prefix_turns(self, where: str, messages: list[dict[str, Any]], tools: list[Any] | None, answers: list[int],
                      cleaned: dict[int, Any]) -> tuple[dict[int, str], list[str]]:
        """The exact way: each assistant message's prompt (rendered with the generation prompt) and every prefix."""
        before_answer = dict(zip(answers, self._render(where, [messages[:i] for i in answers], tools,
                                                       add_generation_prompt=True, cleaned=cleaned)))
        through = self._render(where, [messages[: i + 1] for i in range(len(messages))], tools, cleaned=cleaned)
        return before_answer, through

    def _cut(self, where: str, messages: list[dict[str, Any]], before_answer: dict[int, str], through: list[str],
             emptied: dict[int, str]) -> list[tuple[str, bool]]:
        last_assistant = max(before_answer)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            bounds = []
            if message["role"] == "assistant":
                bounds.append((before_answer[i], False))
            supervised = message["role"] == "assistant" and (not self.mask_history or i == last_assistant)
            bounds.append((through[i], supervised))
            for text, is_supervised in bounds:
                if not text.startswith(done):
                    raise _not_turn_by_turn(where, i)
                added = text[len(done):]
                span = reasoning_span(added, emptied[i][len(done):]) if (
                    is_supervised and i in emptied and emptied[i].startswith(done)) else None
                if span is None:
                    pieces.append((added, is_supervised))
                else:  # the trace stays in the text, without loss
                    pieces += [(added[: span[0]], True), (added[span[0]: span[1]], False), (added[span[1]:], True)]
                done = text
        return [(text, flag) for text, flag in pieces if text]

    def _cut_at(self, where: str, messages: list[dict[str, Any]], full: str, prompt_ends: dict[int, int],
                ends: list[int]) -> list[tuple[str, bool]]:
        """``_cut`` for a row split from one render: the same pieces, cut at places in ``full`` (no reasoning trace)."""
        last_assistant = max(prompt_ends)
        pieces: list[tuple[str, bool]] = []
        done = 0
        for i, message in enumerate(messages):
            supervised = False
            if message["role"] == "assistant":
                if prompt_ends[i] > ends[i]:
                    raise _not_turn_by_turn(where, i)
                pieces.append((full[done: prompt_ends[i]], False))
                done = prompt_ends[i]
                supervised = not self.mask_history or i == last_assistant
            pieces.append((full[done: ends[i]], supervised))
            done = ends[i]
        return [(text, flag) for text, flag in pieces if text]

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        messages, tools = self.conversation(where, row)
        messages = self._checked(where, messages)
        needs_tools = bool(tools) or any(m.get("tool_calls") for m in messages)
        if needs_tools and not self._template_renders_tools():
            messages, tools = inline_tools(messages, tools), None
        segments = self._segments(where, messages, tools)
        return Pieces([text for text, _ in segments], [False] * len(segments), [flag for _, flag in segments])

    def _encode_texts(self, prepared: list[Pieces]) -> Iterator[list[list[int]] | RowIds]:
        """Each row's pieces tokenized one by one, in one backend encoding per row (see ``BatchEncoder.encode_rows``)."""
        if any(pieces.prefixes or any(pieces.special) for pieces in prepared):
            yield from super()._encode_texts(prepared)
        else:
            yield from self.encoder.encode_row_ids([pieces.texts for pieces in prepared])

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]] | RowIds) -> dict[str, Any]:
        """The row's tokens and the spans whose labels are their next tokens (each supervised piece's), truncated as
        the row limit says (the ``tokens`` form of ``token_table``)."""
        ids, cuts = encoded if isinstance(encoded, RowIds) else RowIds.joined(encoded)
        n = len(ids)
        keep = self.row_limit.keep(where, n - 1) + 1  # n tokens are n - 1 model inputs once shifted
        lo, hi = (n - keep, n) if keep < n and self._truncation_side() == "left" else (0, min(keep, n))
        spans: list[int] = []  # shifted positions: label k is token lo + k + 1
        supervised = 0
        for a, b, is_supervised in zip(cuts, cuts[1:], pieces.state):
            a, b = max(a, lo + 1), min(b, hi)
            if is_supervised and a < b:
                spans += (a - lo - 1, b - lo - 1)
                supervised += b - a
        if not supervised:
            raise DatasetError(f"{where}: no assistant token is left to learn from after truncation to "
                               f"{self.row_limit.describe()}")
        return {"tokens": ids if hi - lo == n else ids[lo:hi], "label_spans": spans, "supervised": supervised}
