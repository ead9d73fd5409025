"""Every prefix render of a conversation from one render of it, for chat templates shown to render turn by turn.

Why its own part: ``ChatDataset`` locates assistant tokens by rendering each prefix of a conversation;
``TurnSplit`` learns, from the rows rendered that way, whether the template adds one message at a
time, and then stands in for those renders with two (see the class docstring).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def row_shape(messages: list[dict[str, Any]], tools: list[Any] | None) -> tuple[Any, ...]:
    """What a chat template commonly branches on: tools, the first and last role, which role follows which
    (with or without tool calls), one or several turns, the message fields that are set."""
    roles = [(m["role"], bool(m.get("tool_calls"))) for m in messages]
    several = tuple(sum(m["role"] == role for m in messages) > 1 for role in ("user", "assistant"))
    fields_set = sorted({k for m in messages for k, v in m.items() if v not in (None, "", [], {})})
    return (bool(tools), roles[0], roles[-1], tuple(sorted(set(zip(roles, roles[1:])))), several, tuple(fields_set))


@dataclass
class TurnSplit:
    """Every prefix render of a conversation, from one render of it, for templates shown to render turn by turn.

    Why: locating the assistant tokens exactly renders each prefix (``messages[:i + 1]``, and
    ``messages[:i]`` with the generation prompt before each answer): about 1.5 renders per
    message, each as long as its prefix, quadratic in turns and most of the set-up time besides
    tokenizing. Most templates add one message at a time: each prefix's text extends the one
    before, every message after the first starts with the same ``marker`` (``<|im_start|>`` in
    ChatML), and the generation prompt is always the same text (``<|im_start|>assistant\\n``).
    Then the renders of the first message and of the whole conversation give every prefix: the
    whole text cut before each of the ``n - 1`` places the marker occurs after the first message
    (a row whose later messages hold the marker in their text cannot be cut so and is rendered exactly).
    Rows whose reasoning trace is masked are always rendered exactly.

    The rows rendered exactly teach the marker and the prompt; a template that changes earlier
    text in any of them (some reasoning templates do) or shows two prompts is never split. The
    first ``PROBES`` rows of each shape (``row_shape``) are split too and must agree with the exact
    renders before rows of that shape are split; one disagreement and no row is.
    """

    PROBES = 2
    marker: str | None = None
    prompt: str | None = None
    agreed: dict[tuple[Any, ...], int] = field(default_factory=dict)
    off: bool = False

    def trusts(self, shape: tuple[Any, ...] | None) -> bool:
        return shape is not None and not self.off and self.agreed.get(shape, 0) >= self.PROBES

    def probing(self, shape: tuple[Any, ...]) -> bool:
        return not self.off and self.agreed.get(shape, 0) < self.PROBES

    def learn(self, before_answer: dict[int, str], through: list[str]) -> bool:
        """Take the marker and prompt from an exact render; False (and never split again) when it is not turn by turn."""
        for i in range(1, len(through)):
            done = through[i - 1]
            if not through[i].startswith(done) or (i in before_answer and not before_answer[i].startswith(done)):
                self.off = True
                break
            added = through[i][len(done):]
            self.marker = added if self.marker is None else os.path.commonprefix([self.marker, added])
            if i in before_answer:
                prompt = before_answer[i][len(done):]
                self.off = self.off or (self.prompt is not None and prompt != self.prompt)
                self.prompt = prompt
        self.off = self.off or self.marker == ""
        return not self.off

    def check(self, shape: tuple[Any, ...], exact: tuple[dict[int, str], list[str]],
              split: tuple[dict[int, str], list[str]] | None) -> None:
        """A probe row: the split must equal the exact renders (a row the split cannot cut says nothing)."""
        if split is not None:
            self.off = self.off or split != exact
            self.agreed[shape] = self.agreed.get(shape, 0) + 1

    def split(self, first: str, full: str, n: int, answers: list[int]) -> tuple[dict[int, str], list[str]] | None:
        """(each answer's prompt, each prefix) from the first message's and the whole conversation's text, or None."""
        if not full.startswith(first) or (n > 1 and not self.marker):
            return None
        ends = []  # where message i + 1 starts: every occurrence of the marker after the first message
        at = full.find(self.marker, len(first)) if n > 1 else -1
        while at >= 0 and len(ends) < n:
            ends.append(at)
            at = full.find(self.marker, at + 1)
        if len(ends) != n - 1 or (ends and ends[0] != len(first)):
            return None
        ends.append(len(full))
        before_answer = {}
        for i in answers:
            if i and (self.prompt is None or not full.startswith(self.prompt, ends[i - 1])):
                return None
            before_answer[i] = full[: ends[i - 1]] + self.prompt if i else ""
        return before_answer, [full[:end] for end in ends]
