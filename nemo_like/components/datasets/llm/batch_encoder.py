"""Token ids of many texts in one call, and how many of a text's tokens are a prefix's, without tokenizing the prefix.

Why: set-up time of a large dataset is mostly tokenizer time. A fast tokenizer's Rust backend
gives the same ids as ``tokenizer(texts)["input_ids"]`` without the per-text Python objects
the wrapper builds (masks, type ids, BatchEncoding); a slow tokenizer goes through the wrapper.

Supervised data needs to know where the prompt ends inside the tokens of ``prompt + answer``.
Tokenizing the prompt a second time costs about half as much again as the whole row. A fast
tokenizer splits text at its special tokens before anything else, and tokenizes each stretch
between them on its own, so the tokens of a prefix up to its last special token are the tokens
of the full text up to that token; only the short rest after it (in a chat template the same
``assistant\\n`` for every row) needs tokenizing, once, and comparing with the full text's tokens
at that place. The count is exactly ``len(tokenize(prefix))`` whenever ``tokenize(full)`` starts
with ``tokenize(prefix)``, and None (the caller tokenizes the prefix itself) whenever this cannot
be shown: no special token in the prefix, special tokens that strip or normalise their
neighbours, a slow tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

MISMATCH = -1  # the full text's tokens do not begin with the prefix's tokens
_SIMPLE_SPLITTERS = {"Digits", "Whitespace", "WhitespaceSplit", "Punctuation"}  # split by character classes only


def reads_no_text_before_a_word(backend: Any) -> bool:
    """Whether a text cut between two of the pre-tokenizer's words gives, after the cut, the words the rest of the
    text gives alone: no normalizer (one may join characters across the cut) and pre-tokenizers that only match
    forward (no look-behind, start or word-boundary anchors; no space put before the text)."""
    try:
        spec = json.loads(backend.to_str())
    except (ValueError, TypeError, AttributeError):
        return False
    return spec.get("normalizer") is None and _forward_only(spec.get("pre_tokenizer"))


def _forward_only(node: Any) -> bool:
    if not isinstance(node, dict):
        return False  # no pre-tokenizer: the whole text is one word
    kind = node.get("type")
    if kind == "Sequence":
        return all(_forward_only(n) for n in node.get("pretokenizers") or [None])
    if kind == "ByteLevel":
        return not node.get("add_prefix_space", True)
    if kind == "Split":
        pattern = node.get("pattern") or {}
        return "String" in pattern or _regex_forward_only(pattern.get("Regex"))
    return kind in _SIMPLE_SPLITTERS


def _regex_forward_only(regex: Any) -> bool:
    """No ``^``, ``(?<`` (look-behind, named group: refused alike), ``\\b``, ``\\B``, ``\\A``, ``\\G`` outside a class."""
    if not isinstance(regex, str):
        return False
    in_class, i = False, 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            if regex[i + 1 : i + 2] in ("b", "B", "A", "G"):
                return False
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if regex[i + 1 : i + 2] in ("^", "]") else 1  # a leading ^ negates, a leading ] is literal
            continue
        elif c == "^" or regex.startswith("(?<", i):
            return False
        i += 1
    return True


class RowIds(NamedTuple):
    """A row's ids and where each of its pieces starts (``cuts[k]:cuts[k + 1]`` is piece ``k``; one more than pieces).

    Why: a row tokenized whole is cut back into pieces only to be joined again; bounds cost nothing to pass on.
    """

    ids: list[int]
    cuts: list[int]

    @classmethod
    def joined(cls, pieces: Sequence[Sequence[int]]) -> RowIds:
        ids: list[int] = []
        cuts = [0]
        for piece in pieces:
            ids += piece
            cuts.append(len(ids))
        return cls(ids, cuts)

    def pieces(self) -> list[list[int]]:
        return [self.ids[a:b] for a, b in zip(self.cuts, self.cuts[1:])]


class BatchEncoder:
    """``encode(texts, special)`` -> ids per text; ``prefix_count(prefix, full, i)`` for the last batch encoded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is not None and (backend.truncation is not None or backend.padding is not None):
            backend = None  # the wrapper switches these off per call; the backend alone would apply them
        self.backend = backend
        self._split = self._special_pattern(tokenizer) if backend is not None else None
        self._special_ids = ({t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
                             if self._split is not None else {})
        contents = list(self._special_ids)
        self._nested = any(a != b and a in b for a in contents for b in contents)  # count occurrences the slow way
        self._tails: dict[str, list[int]] = {}
        self._encodings: list[Any] = []
        self._checked = False
        self._grouped: bool | None = None  # encode_rows may hand a row's texts to the backend as one sequence
        self._whole = self._split is not None and reads_no_text_before_a_word(backend)

    def __getstate__(self) -> dict[str, Any]:
        """Sent to worker processes without the last batch's encodings (not picklable, not needed)."""
        return {**self.__dict__, "_encodings": [], "_tails": {}}

    @staticmethod
    def _special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
        """A pattern finding the tokenizer's added tokens as it finds them (longest first), or None when one of
        them is matched in a way a plain text search cannot follow (normalised, stripping, whole-word)."""
        added = list(getattr(tokenizer, "added_tokens_decoder", {}).values())
        if not added or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added):
            return None
        contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
        return re.compile("|".join(re.escape(c) for c in contents))

    def encode(self, texts: Sequence[str], special: bool, keep: bool = False) -> list[list[int]]:
        """Ids of every text, as ``tokenizer(texts, add_special_tokens=special)["input_ids"]`` gives them;
        ``keep``: hold the encodings for ``prefix_count`` (until the next ``keep`` call)."""
        if keep:
            self._encodings = []
        if not texts:
            return []
        if self.backend is None:
            return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=special,
                                                        return_attention_mask=False,
                                                        return_token_type_ids=False)["input_ids"]]
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=special)
        ids = [e.ids for e in encodings]
        if not self._checked:  # once: the backend and the wrapper agree on this tokenizer
            self._checked = True
            probe = list(texts[:4])
            expected = self.tokenizer(probe, add_special_tokens=special, return_attention_mask=False,
                                      return_token_type_ids=False)["input_ids"]
            if [list(x) for x in expected] != ids[: len(probe)]:
                self.backend, self._split = None, None
                return self.encode(texts, special)
        if keep and not special:
            self._encodings = encodings
        return ids

    def encode_rows(self, rows: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Per row, the ids of each of its texts, as ``encode(texts, False)`` gives them (see ``encode_row_ids``)."""
        return [row.pieces() for row in self.encode_row_ids(rows)]

    def encode_row_ids(self, rows: Sequence[Sequence[str]]) -> list[RowIds]:
        """Per row, its texts' ids one after the other and where each text starts, as ``encode(texts, False)`` gives
        them.

        Why: a chat row is a dozen short pieces, and one backend encoding per piece costs a fifth
        more than the row's text tokenized whole. A piece that starts with an added token (the
        ``<|im_start|>`` of each turn) is joined to the piece before it: the tokenizer cuts text at
        added tokens before anything else, so the joined text's tokens are the two pieces' tokens
        one after the other, and the piece starts at that added token, found in the ids. The joined
        texts go to the backend as one pre-split sequence per row, so the other pieces (an answer
        after its ``assistant\\n`` header) are still tokenized each on its own, exactly as alone
        (normalised, split, pre-tokenized per piece); ``word_to_tokens`` says which tokens each gave.
        Where the pre-tokenizer reads no text before a word (``reads_no_text_before_a_word``), a
        row goes to the backend as one plain text instead, as a row tokenized whole would (the
        pre-split sequence costs about a tenth more), and is cut back where that is shown to give
        each piece its own tokens (``_cut_whole``); a row where it is not goes the joined way.
        The first rows are compared with ``encode`` once; on a difference (or a slow tokenizer)
        ``encode`` does it all.
        """
        if self.backend is None or self._grouped is False:
            return self._split_flat(rows)
        out: list[RowIds | None] = [None] * len(rows)
        ways = ([self._whole_rows] if self._whole else []) + [self._joined_rows]
        for way in ways:
            redo = [i for i, row in enumerate(out) if row is None]
            if not redo:
                break
            found = way([rows[i] for i in redo])
            if found is None:  # the joined way cannot split these rows back
                return self._split_flat(rows)
            for i, row in zip(redo, found):
                out[i] = row
        if self._grouped is None:
            probe = rows[:4]
            self._grouped = out[: len(probe)] == self._split_flat(probe)
            if not self._grouped:
                return self._split_flat(rows)
        return out  # type: ignore[return-value]

    def _whole_rows(self, rows: Sequence[Sequence[str]]) -> list[RowIds | None]:
        """Each row tokenized as one text and cut back into its pieces where that is shown to give each piece's
        own tokens (see ``_cut_whole``); None for a row where it is not (it is tokenized piece by piece)."""
        texts = ["".join(texts) for texts in rows]
        encodings = iter(self.backend.encode_batch([t for t in texts if t], add_special_tokens=False))
        return [self._cut_whole(pieces, text, next(encodings)) if text else RowIds([], [0] * (len(pieces) + 1))
                for pieces, text in zip(rows, texts)]

    def _cut_whole(self, pieces: Sequence[str], text: str, encoding: Any) -> RowIds | None:
        """The tokens of ``text`` (= the pieces joined) cut at the pieces' bounds, or None when a cut is not shown exact.

        A cut at an added token is exact (the tokenizer splits there first). Elsewhere the cut must
        fall between two of the pre-tokenizer's words, and the tokens from the last exact point
        before it (an added token, or the cut before) must be the tokens of that stretch alone
        (tokenized once per distinct stretch: a template's ``assistant\n`` header repeats). With a
        pre-tokenizer that reads no text before a word (``_whole`` checks that), the tokens after
        such a cut are then those of the rest of the text alone, and so on to the end.
        """
        ids = encoding.ids
        cuts = [0]
        at = 0  # the characters joined so far
        anchor_char, anchor_token = 0, 0  # the last point from where the tokens are the text's alone
        for piece in pieces[:-1]:
            start = at
            at += len(piece)
            if at == start or at == len(text):  # an empty piece, or only empty pieces left
                cuts.append(cuts[-1] if at == start else len(ids))
                continue
            token = encoding.char_to_token(at)
            if token is None or encoding.token_to_chars(token)[0] != at:
                return None
            if self._split.match(text, at) is None:  # not at an added token: check the stretch before the cut
                if token == 0 or encoding.token_to_word(token) == encoding.token_to_word(token - 1):
                    return None
                last = None
                for last in self._split.finditer(text, anchor_char, at):
                    pass
                if last is not None:
                    special = encoding.char_to_token(last.start())
                    if special is None or ids[special] != self._special_ids.get(last.group()):
                        return None
                    anchor_char, anchor_token = last.end(), special + 1
                if ids[anchor_token:token] != self._tail(text[anchor_char:at]):
                    return None
            anchor_char, anchor_token = at, token
            cuts.append(token)
        cuts.append(len(ids))
        return RowIds(ids, cuts)

    def _tail(self, text: str) -> list[int]:
        """``text``'s ids alone, kept for the stretches that repeat (a template's headers)."""
        tail_ids = self._tails.get(text)
        if tail_ids is None:
            tail_ids = self._tails[text] = self.backend.encode(text, add_special_tokens=False).ids if text else []
            if len(self._tails) > 4096:  # a cap keeps odd data bounded
                self._tails.clear()
        return tail_ids

    def _joined_rows(self, rows: Sequence[Sequence[str]]) -> list[RowIds] | None:
        """Each row's texts joined at added tokens, pre-split at the other cuts (None when the ids do not split back)."""
        plans = [self._join(texts) for texts in rows]
        full = [words for words, _ in plans if words]
        encodings = iter(self.backend.encode_batch(full, is_pretokenized=True, add_special_tokens=False) if full else [])
        out = []
        for texts, (words, starts) in zip(rows, plans):
            encoding = next(encodings) if words else None
            ids = encoding.ids if words else []
            pieces, at = [], 0
            try:
                for k, word_starts in enumerate(starts):
                    span = encoding.word_to_tokens(k)
                    end = at if span is None else span[1]
                    word_at = at
                    for added, before in word_starts:  # a joined piece starts at this added token's next occurrence
                        cut = word_at - 1
                        for _ in range(before + 1):
                            cut = ids.index(added, cut + 1, end)
                        pieces.append(ids[at:cut])
                        at = cut
                    pieces.append(ids[at:end])
                    at = end
            except ValueError:  # an added token is not where the text has it
                at = -1
            if at != len(ids) or len(pieces) != len(texts):  # not one stretch of tokens per piece, in order
                self._grouped = False
                return None
            out.append(RowIds.joined(pieces))
        return out

    def _join(self, texts: Sequence[str]) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """A row's texts joined where a text starts with an added token: the joined texts, and per joined text, for
        each piece after its first, (the id of the added token it starts with, how often it occurs before it)."""
        words: list[str] = []
        starts: list[list[tuple[int, int]]] = []
        for text in texts:
            match = self._split.match(text) if words and self._split is not None and text else None
            if match is None:
                words.append(text)
                starts.append([])
                continue
            added = match.group()
            before = (words[-1].count(added) if not self._nested else
                      sum(found == added for found in self._split.findall(words[-1])))
            starts[-1].append((self._special_ids[added], before))
            words[-1] += text
        return words, starts

    def _split_flat(self, rows: Sequence[Sequence[str]]) -> list[RowIds]:
        ids = iter(self.encode([text for texts in rows for text in texts], False))
        return [RowIds.joined([next(ids) for _ in texts]) for texts in rows]

    def prefix_count(self, prefix: str, full: str, index: int) -> int | None:
        """``len(tokenize(prefix))`` for ``full`` = the ``index``-th text of the last ``encode(..., False, keep=True)``;
        ``MISMATCH`` when ``tokenize(full)`` does not start with ``tokenize(prefix)``; None when not shown here."""
        if self._split is None or index >= len(self._encodings) or not full.startswith(prefix):
            return None
        last = None
        for last in self._split.finditer(prefix):
            pass
        if last is None:
            return None
        encoding = self._encodings[index]
        at = encoding.char_to_token(last.start())
        ids = encoding.ids
        if at is None or ids[at] != self._special_ids.get(last.group()):
            return None
        tail_ids = self._tail(prefix[last.end():])
        end = at + 1 + len(tail_ids)
        return end if ids[at + 1 : end] == tail_ids else MISMATCH
