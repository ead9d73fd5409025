"""xLAM function-calling rows -> a chat with tool schemas and an assistant turn of tool calls.

An xLAM row holds ``query`` (the user's request), ``tools`` (a JSON list of function
specs whose ``parameters`` map a name to ``{type, description, default?}``) and
``answers`` (a JSON list of ``{name, arguments}`` calls). Each becomes an OpenAI-style
conversation, user query then assistant ``tool_calls``, rendered by the chat template
through :class:`ChatDataset`, so only the calls (and their end of turn) carry loss.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset, parse_json_field

_JSON_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
               "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array", "tuple": "array",
               "dict": "object", "object": "object", "any": "string"}


def json_schema_type(xlam_type: Any) -> str:
    """xLAM's Python-style type names (``str``, ``List[int]``, ``float, optional``) as JSON-schema types."""
    base = str(xlam_type or "str").split(",")[0].strip().lower()
    return _JSON_TYPES.get(base.split("[")[0], "string")


def xlam_tool_to_openai(where: str, tool: Any) -> dict[str, Any]:
    """One xLAM function spec as an OpenAI tool schema; a parameter without a default is required."""
    if not isinstance(tool, dict) or not tool.get("name"):
        raise DatasetError(f"{where}: every entry of 'tools' needs a 'name'")
    params = tool.get("parameters") or {}
    if not isinstance(params, dict):
        raise DatasetError(f"{where}: tool {tool['name']!r}: 'parameters' must map names to specs")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in params.items():
        spec = spec if isinstance(spec, dict) else {}
        prop: dict[str, Any] = {"type": json_schema_type(spec.get("type"))}
        if spec.get("description"):
            prop["description"] = spec["description"]
        if "default" in spec:
            prop["default"] = spec["default"]
        else:
            required.append(name)
        properties[name] = prop
    return {"type": "function", "function": {
        "name": tool["name"], "description": tool.get("description", ""),
        "parameters": {"type": "object", "properties": properties, "required": required},
    }}


def xlam_calls(where: str, answers: Any) -> list[dict[str, Any]]:
    """xLAM ``answers`` as assistant ``tool_calls`` with JSON-string arguments (the OpenAI wire format)."""
    if not isinstance(answers, list) or not answers:
        raise DatasetError(f"{where}: 'answers' must be a non-empty JSON list of {{name, arguments}} calls")
    calls = []
    for k, answer in enumerate(answers):
        if not isinstance(answer, dict) or not answer.get("name"):
            raise DatasetError(f"{where}: answers[{k}] needs a 'name' (and 'arguments')")
        arguments = answer.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise DatasetError(f"{where}: answers[{k}]: 'arguments' must be an object")
        calls.append({"id": f"call_{k}", "type": "function",
                      "function": {"name": answer["name"], "arguments": json.dumps(arguments)}})
    return calls


class XLAMDataset(ChatDataset):
    """:class:`ChatDataset` over xLAM rows (``query``, ``tools``, ``answers``)."""

    def conversation(self, where: str, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
        missing = [key for key in ("query", "tools", "answers") if key not in row]
        if missing:
            raise DatasetError(f"{where}: an xLAM row needs {missing}; the row has {sorted(row)}")
        if not isinstance(row["query"], str) or not row["query"].strip():
            raise DatasetError(f"{where}: 'query' must be a non-empty string, got {row['query']!r:.40}")
        tools = parse_json_field(where, "tools", row["tools"])
        if not isinstance(tools, list):
            raise DatasetError(f"{where}: 'tools' must be a JSON list of function specs")
        calls = xlam_calls(where, parse_json_field(where, "answers", row["answers"]))
        messages = [{"role": "user", "content": row["query"]},
                    {"role": "assistant", "content": "", "tool_calls": calls}]
        return messages, [xlam_tool_to_openai(where, tool) for tool in tools] or None


def make_xlam_dataset(
    tokenizer: Any,
    dataset_name: str | Sequence[str] = "Salesforce/xlam-function-calling-60k",
    split: str | None = None,
    seq_length: int | None = None,
    padding: str | bool = "do_not_pad",
    truncation: str | bool = "do_not_truncate",
    limit_dataset_samples: int | None = None,
    chat_template: str | None = None,
    skip_invalid_samples: bool = False,
    path_or_dataset_id: str | Sequence[str] | None = None,
    max_length: int | None = None,
) -> XLAMDataset:
    """Build the xLAM dataset from the hub id or local JSON/JSONL (``path_or_dataset_id`` is an alias).

    ``max_length`` is the model's context, as for :class:`ChatDataset`.
    """
    return XLAMDataset(
        path_or_dataset_id or dataset_name, tokenizer, split=split, seq_length=seq_length, padding=padding,
        truncation=truncation, chat_template=chat_template, skip_invalid_samples=skip_invalid_samples,
        limit_dataset_samples=limit_dataset_samples, max_length=max_length,
    )
