"""Instruction data from any column names: context / question / answer -> pre-shifted tokens.

Every row is tokenized and checked when the dataset is built (in batches, by several
processes, into a cached token table; see ``tokenized_dataset``), so a bad row stops the
run at set-up, naming its file and line, before anything is trained or written.

The prompt and the completion can also be written from the row's columns, as in
prompt/completion fine-tuning configs: ``prompt_template`` (``"Summarize:\n{dialogue}\n"``,
a ``str.format`` template) or ``prompt_func`` (a function of the row; a YAML names it as
``pkg.module.fn`` or ``path/file.py:fn`` and the recipe's data builder resolves it through the
import gate), and likewise ``completion_template`` / ``completion_func``. The loss stays on the
completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on
from nemo_like.components.datasets.llm.prompt_template import RowFormatter, row_formatter
from nemo_like.components.datasets.llm.batch_encoder import MISMATCH
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset, callable_identity
from nemo_like.components.datasets.llm.turn_split import row_shape

_COLUMNS = ("context", "question", "answer")


def format_prompt(context: str | None, question: str | None) -> str:
    """The user-facing text of a row: the non-empty parts of context and question."""
    return " ".join(part for part in (context, question) if part)


class ColumnMappedTextInstructionDataset(TokenizedDataset):
    """Supervised rows mapped from arbitrary columns, answer-only loss by default.

    Each item holds ``input_ids``, ``labels`` and ``attention_mask`` as lists, already
    shifted by one (``labels[i]`` is the token after ``input_ids[i]``), with -100 on
    prompt tokens. The end-of-sequence / end-of-turn token after the answer is always
    supervised, also when the tokenizer pads with it. A row longer than ``seq_length``, or
    without it than the model's context ``max_length`` (see ``context_limit``), is an error
    naming it, or has its answer cut with ``truncation`` (the count is logged once).
    ``num_proc`` processes tokenize (default: the machine's cores); ``cache_dir`` holds the
    token cache (default ``$NEMO_LIKE_HOME/datasets``).
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        column_mapping: dict[str, str] | None = None,
        tokenizer: Any = None,
        split: str | None = None,
        answer_only_loss_mask: bool = True,
        seq_length: int | None = None,
        padding: str | bool = "do_not_pad",
        truncation: str | bool = "do_not_truncate",
        limit_dataset_samples: int | None = None,
        use_hf_chat_template: bool = False,
        start_of_turn_token: str | None = None,
        prompt_template: str | None = None,
        prompt_func: str | Callable[[dict[str, Any]], str] | None = None,
        completion_template: str | None = None,
        completion_func: str | Callable[[dict[str, Any]], str] | None = None,
        max_length: int | None = None,
        num_proc: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        column_mapping = dict(column_mapping or {})
        unknown = set(column_mapping) - set(_COLUMNS)
        if unknown:
            raise DatasetError(f"dataset.column_mapping: unknown key(s) {sorted(unknown)}; use {list(_COLUMNS)}")
        self.prompt_format: RowFormatter | None = row_formatter("prompt", prompt_template, prompt_func)
        self.completion_format: RowFormatter | None = row_formatter(
            "completion", completion_template, completion_func
        )
        if "answer" not in column_mapping and self.completion_format is None:
            raise DatasetError("dataset.column_mapping: 'answer' is required "
                               "(or give completion_template / completion_func)")
        self.tokenizer = tokenizer
        self.column_mapping = column_mapping
        self.answer_only_loss_mask = answer_only_loss_mask
        self.seq_length = seq_length
        self.pad_to_seq_length = padding in ("max_length", True)
        self.truncate = is_truncation_on(truncation)
        self.row_limit = RowLimit(tokenizer, max_length, seq_length, self.truncate, source=path_or_dataset_id)
        self.use_hf_chat_template = use_hf_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._load_samples(path_or_dataset_id, split, limit_dataset_samples, cache_dir, num_proc)

    def _load_samples(self, path_or_dataset_id: str | Sequence[str], split: str | None, limit: int | None,
                      cache_dir: str | None, num_proc: int | None) -> None:
        """Tokenize every row now, or map the cached tokens (the streaming variant overrides this to read lazily)."""
        self._load_table(path_or_dataset_id, split, limit, cache_dir, num_proc)

    def _settings(self) -> dict[str, Any] | None:
        functions = [callable_identity(f.func if f is not None else None)
                     for f in (self.prompt_format, self.completion_format)]
        if None in functions:
            return None
        return {"column_mapping": self.column_mapping, "answer_only_loss_mask": self.answer_only_loss_mask,
                "use_hf_chat_template": self.use_hf_chat_template, "functions": functions,
                "templates": [f.template if f is not None else None for f in (self.prompt_format,
                                                                               self.completion_format)]}

    def _column(self, where: str, row: dict[str, Any], key: str) -> str | None:
        name = self.column_mapping.get(key)
        if name is None:
            return None
        if name not in row:
            raise DatasetError(
                f"{where}: column '{name}' (column_mapping.{key}) is missing; the row has {sorted(row)}"
            )
        value = row[name]
        return None if value is None else str(value)

    def _prompt_text(self, where: str, row: dict[str, Any]) -> str:
        if self.prompt_format is not None:
            return self.prompt_format(where, row)
        return format_prompt(self._column(where, row, "context"), self._column(where, row, "question"))

    def _answer_text(self, where: str, row: dict[str, Any]) -> str:
        if self.completion_format is not None:
            answer = self.completion_format(where, row)
            if not answer.strip():
                raise DatasetError(f"{where}: empty completion (dataset.{self.completion_format.key})")
            return answer
        answer = self._column(where, row, "answer")
        if answer is None or not answer.strip():
            raise DatasetError(f"{where}: empty answer (column '{self.column_mapping['answer']}')")
        return answer

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        return self._pieces_of([(where, row)])[0]

    def _pieces_of(self, rows: list[tuple[str, dict[str, Any]]]) -> list[Pieces]:
        """Each row's prompt and answer texts; with the chat template, a batch's prompts and conversations are
        rendered in two template calls (tokenized as ``apply_chat_template`` tokenizes them)."""
        pairs = []
        for where, row in rows:  # a bad row stops the batch here (this dataset never skips rows)
            answer = self._answer_text(where, row)
            pairs.append((self._prompt_text(where, row), answer))
        if not self.use_hf_chat_template:
            # A written prompt ends as its template or function says; the column prompt gets one space.
            separator = "" if self.prompt_format is not None else " "
            return [Pieces([prompt + separator, answer], [True, False], "plain") for prompt, answer in pairs]
        render = self._renderer(self.tokenizer.chat_template).render
        users = [[{"role": "user", "content": prompt}] for prompt, _ in pairs]
        conversations = [u + [{"role": "assistant", "content": a}] for u, (_, a) in zip(users, pairs)]
        fulls = render(conversations)
        prompts = self._prompts(render, users, conversations, fulls)
        return [Pieces([f], [False], "chat_template", prefixes={0: p}) for p, f in zip(prompts, fulls)]

    def _prompts(self, render: Callable[..., list[str]], users: list[list[dict[str, str]]],
                 conversations: list[list[dict[str, str]]], fulls: list[str]) -> list[str]:
        """Each conversation's prompt as rendered with the generation prompt: cut from its full render where the
        template has shown to render turn by turn (``TurnSplit``; the first rows of a shape are probes), rendered
        for the other rows."""
        turns = self._turns
        prompts: list[str | None] = []
        for user, conversation, full in zip(users, conversations, fulls):
            shape = row_shape(conversation, None)
            found = turns.bounds(full, 2, [1], shape) if turns.trusts(shape) else None
            if found is not None:
                prompts.append(full[: found[0][1]])
            elif turns.probing(shape):  # rendered exactly, and what it shows is learnt
                (prompt,), (first,) = render([user], add_generation_prompt=True), render([user])
                turns.observe({1: prompt}, [first, full], shape)
                prompts.append(prompt)
            else:
                prompts.append(None)
        rest = [i for i, p in enumerate(prompts) if p is None]
        for i, prompt in zip(rest, render([users[i] for i in rest], add_generation_prompt=True) if rest else []):
            prompts[i] = prompt
        return prompts  # type: ignore[return-value]

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, list[int]] | None:
        if pieces.state == "chat_template":
            (full_ids,) = encoded
            n = pieces.counts[0]  # the prompt's tokens, counted inside the conversation's (see Pieces.prefixes)
            if n == MISMATCH:
                raise DatasetError(f"{where}: the chat template does not render the prompt as a prefix of the "
                                   "conversation")
            prompt_ids, answer_ids = full_ids[:n], full_ids[n:]
        else:
            prompt_ids, answer_ids = encoded[0], encoded[1] + [self.tokenizer.eos_token_id]
        # Lengths count model inputs: the pair is shifted, so n tokens are n - 1 inputs.
        limit = self.row_limit.limit
        if limit is not None and len(prompt_ids) >= limit:
            raise DatasetError(f"{where}: the prompt alone is {len(prompt_ids)} tokens, not shorter than "
                               f"{self.row_limit.describe()}; truncation cuts only the answer, shorten the prompt")
        keep = self.row_limit.keep(where, len(prompt_ids) + len(answer_ids) - 1)
        answer_ids = answer_ids[: keep + 1 - len(prompt_ids)]
        ids = prompt_ids + answer_ids
        first = max(len(prompt_ids) - 1, 0) if self.answer_only_loss_mask else 0  # shifted: label k is token k + 1
        if len(ids) - 1 <= first:
            return None  # no label left
        return {"tokens": ids, "label_spans": [first, len(ids) - 1], "supervised": len(ids) - 1 - first}
