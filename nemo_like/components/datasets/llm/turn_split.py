"""Every prefix render of a conversation from one render of it, for chat templates shown to render turn by turn.

Why its own part: ``ChatDataset`` locates assistant tokens by rendering each prefix of a conversation;
``TurnSplit`` learns, from the rows rendered that way, whether the template adds one message at a
time, and then stands in for those renders with one (see the class docstring).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def row_shape(messages: list[dict[str, Any]], tools: list[Any] | None) -> tuple[Any, ...]:
    """What a chat template commonly branches on: tools, the first and last role, which role follows which
    (with or without tool calls), one or several turns, the message fields that are set."""
    roles = tuple([(m["role"], bool(m.get("tool_calls"))) for m in messages])
    fields_set = frozenset([k for m in messages for k, v in m.items() if v or _set(v)])
    key = (bool(tools), roles, fields_set)
    shape = _SHAPES.get(key)
    if shape is None:
        several = tuple(sum(r == role for r, _ in roles) > 1 for role in ("user", "assistant"))
        shape = (key[0], roles[0], roles[-1], tuple(sorted(set(zip(roles, roles[1:])))), several,
                 tuple(sorted(fields_set)))
        if len(_SHAPES) > 4096:  # a cap keeps odd data bounded
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


_SHAPES: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # the same roles and fields give the same shape


def _set(value: Any) -> bool:
    """A falsy field counts as set unless it is None or an empty string, list or dict (0 and False are set)."""
    return value is not None and value != "" and value != [] and value != {}


@dataclass
class TurnSplit:
    """Every prefix render of a conversation, from one render of it, for templates shown to render turn by turn.

    Why: locating the assistant tokens exactly renders each prefix (``messages[:i + 1]``, and
    ``messages[:i]`` with the generation prompt before each answer): about 1.5 renders per
    message, each as long as its prefix, quadratic in turns and most of the set-up time besides
    tokenizing. Most templates add one message at a time: each prefix's text extends the one
    before, every message after the first starts with the same ``marker`` (``<|im_start|>`` in
    ChatML), and the generation prompt is always the same text (``<|im_start|>assistant\\n``).
    Then one render of the whole conversation gives every prefix: the text cut before each of the
    ``n - 1`` places the marker occurs after the first message. How many times the marker occurs
    in the first message's own render (a default system prompt before it adds one) is learnt per
    shape from the exact renders; a row where the marker does not occur exactly that many times
    plus ``n - 1`` (a message holding the marker in its text) is rendered exactly. Rows whose
    reasoning trace is masked are always rendered exactly.

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
    leads: dict[tuple[Any, ...], tuple[str, int]] = field(default_factory=dict)  # shape -> (marker, its count
    # in the first message's render)

    def trusts(self, shape: tuple[Any, ...] | None) -> bool:
        return (shape is not None and not self.off and self.agreed.get(shape, 0) >= self.PROBES
                and self._lead(shape) is not None)

    def _lead(self, shape: tuple[Any, ...] | None) -> int | None:
        """The marker's count in the first message's render for this shape, if learnt with the current marker."""
        lead = self.leads.get(shape) if shape is not None else None
        return lead[1] if lead is not None and lead[0] == self.marker else None

    def probing(self, shape: tuple[Any, ...]) -> bool:
        return not self.off and self.agreed.get(shape, 0) < self.PROBES

    def learn(self, before_answer: dict[int, str], through: list[str], shape: tuple[Any, ...] | None = None) -> bool:
        """Take the marker and prompt (and the shape's lead) from an exact render; False (and never split again) when
        it is not turn by turn."""
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
                self.marker = os.path.commonprefix([self.marker, prompt])  # not the answers' common start
        self.off = self.off or self.marker == ""
        if not self.off and self.marker and shape is not None and self._lead(shape) is None:
            self.leads[shape] = (self.marker, len(_positions(through[0], self.marker, len(through[0]))))
        return not self.off

    def observe(self, before_answer: dict[int, str], through: list[str], shape: tuple[Any, ...] | None) -> None:
        """A row rendered exactly: learn from it, and while its shape is probed, check the split of its whole render
        (its last prefix) against it."""
        if shape is not None and self.learn(before_answer, through, shape) and self.probing(shape):
            self.check(shape, (before_answer, through), self.split(through[-1], len(through), list(before_answer),
                                                                   shape))

    def check(self, shape: tuple[Any, ...], exact: tuple[dict[int, str], list[str]],
              split: tuple[dict[int, str], list[str]] | None) -> None:
        """A probe row: the split must equal the exact renders (a row the split cannot cut says nothing)."""
        if split is not None:
            self.off = self.off or split != exact
            self.agreed[shape] = self.agreed.get(shape, 0) + 1

    def split(self, full: str, n: int, answers: list[int], shape: tuple[Any, ...] | None
              ) -> tuple[dict[int, str], list[str]] | None:
        """(each answer's prompt, each prefix) from the whole conversation's text, or None."""
        found = self.bounds(full, n, answers, shape)
        if found is None:
            return None
        prompt_ends, ends = found
        return {i: full[:end] for i, end in prompt_ends.items()}, [full[:end] for end in ends]

    def bounds(self, full: str, n: int, answers: list[int], shape: tuple[Any, ...] | None
               ) -> tuple[dict[int, int], list[int]] | None:
        """What ``split`` gives, as places in ``full``: where each answer's prompt ends, where each prefix ends."""
        lead = self._lead(shape)
        if lead is None or not self.marker:
            return None
        found = _positions(full, self.marker, lead + n)  # one more than expected is enough to refuse
        if len(found) != lead + n - 1:
            return None
        ends = found[lead:] + [len(full)]  # where message i + 1 starts; the last: the end
        prompt_ends = {}
        for i in answers:
            if i and (self.prompt is None or not full.startswith(self.prompt, ends[i - 1])):
                return None
            prompt_ends[i] = ends[i - 1] + len(self.prompt) if i else 0
        return prompt_ends, ends


def _positions(text: str, marker: str, most: int) -> list[int]:
    """Where ``marker`` starts in ``text`` (overlaps included), at most ``most`` places."""
    found: list[int] = []
    at = text.find(marker)
    while at >= 0 and len(found) < most:
        found.append(at)
        at = text.find(marker, at + 1)
    return found
