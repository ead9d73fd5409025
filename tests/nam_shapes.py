"""Local stand-ins for the hub data sets NeMo AutoModel recipes name, in the hub rows' shapes.

The rows are arithmetic so a tiny model's tokenizer covers them; the shapes (columns, nesting,
string labels, JSON-in-a-string fields) are what the real sets hold, so a recipe that reads the
hub set reads these unchanged once its dataset id points here.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_jsonl

SPLITS = {"train": 96, "validation": 24}


def squad_rows(n: int, offset: int = 0) -> list[dict]:
    """``rajpurkar/squad``: id, title, context, question, answers {text: [...], answer_start: [...]}."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 23, (5 * i) % 19
        context = f"We add {a} and {b}. The sum of {a} and {b} is {a + b}."
        answer = str(a + b)
        rows.append({"id": f"q{i}", "title": "Sums", "context": context, "question": f"What is {a} plus {b}?",
                     "answers": {"text": [answer], "answer_start": [context.rindex(answer)]}})
    return rows


def hellaswag_rows(n: int, offset: int = 0) -> list[dict]:
    """``rowan/hellaswag``: ctx (= ctx_a + ctx_b), four endings, the label as a string digit."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 17, (3 * i) % 13
        endings = [f"is {a + b + d}." for d in (0, 1, 2, 3)]
        label = i % 4
        endings[0], endings[label] = endings[label], endings[0]
        rows.append({"ind": i, "activity_label": "Sums", "ctx_a": f"What is {a} plus {b}?", "ctx_b": "The answer",
                     "ctx": f"What is {a} plus {b}? The answer", "endings": endings, "source_id": f"s{i}",
                     "split": "train", "split_type": "indomain", "label": str(label)})
    return rows


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    """``allenai/tulu-3-sft-mixture``: id, messages [{role, content}], source."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 29, (7 * i) % 31
        messages = [{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"The answer is {a + b}."}]
        if i % 3 == 0:
            messages = [{"role": "system", "content": "Add the numbers."}, *messages,
                        {"role": "user", "content": f"And {a} plus 1?"},
                        {"role": "assistant", "content": f"The answer is {a + 1}."}]
        rows.append({"id": f"c{i}", "messages": messages, "source": "sums"})
    return rows


def prompt_completion_rows(n: int, offset: int = 0) -> list[dict]:
    """A prompt/completion JSONL, with the extra columns some instruction sets carry."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 29, (3 * i) % 31
        rows.append({"prompt": f"What is {a} plus {b}?", "completion": f" {a + b}", "definition": "Add the numbers.",
                     "inputs": f"What is {a} plus {b}?", "targets": str(a + b)})
    return rows


def xlam_rows(n: int, offset: int = 0) -> list[dict]:
    """``Salesforce/xlam-function-calling-60k``: id, query, and tools / answers as JSON strings."""
    tool = {"name": "add", "description": "Add.", "parameters": {"a": {"type": "int"}, "b": {"type": "int"}}}
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 29, (7 * i) % 31
        rows.append({"id": i, "query": f"What is {a} plus {b}?", "tools": json.dumps([tool]),
                     "answers": json.dumps([{"name": "add", "arguments": {"a": a, "b": b}}])})
    return rows


def agent_rows(n: int, offset: int = 0) -> list[dict]:
    """``llamafactory/glaive_toolcall_en``-style ShareGPT traces: conversations with function calls, tools as JSON."""
    tools = json.dumps([{"name": "add", "description": "Add.",
                         "parameters": {"type": "object", "properties": {"a": {"type": "int"}}}}])
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 29, (7 * i) % 31
        rows.append({"conversations": [
            {"from": "human", "value": f"What is {a} plus {b}?"},
            {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": a}})},
            {"from": "observation", "value": str(a + b)},
            {"from": "gpt", "value": f"It is {a + b}."}], "tools": tools})
    return rows


SHAPES = {"squad": squad_rows, "hellaswag": hellaswag_rows, "chat": chat_rows,
          "prompt_completion": prompt_completion_rows, "xlam": xlam_rows, "agent": agent_rows}


def write_all(root: Path) -> dict[str, str]:
    """Every shape as a folder of ``train.jsonl`` / ``validation.jsonl``; {shape: folder, shape_train: file, ...}."""
    paths: dict[str, str] = {}
    for name, rows in SHAPES.items():
        offset = 0
        for split, n in SPLITS.items():
            paths[f"{name}_{split}"] = write_jsonl(root / name / f"{split}.jsonl", rows(n, offset))
            offset += n
        paths[name] = str(root / name)
    return paths
