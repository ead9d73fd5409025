"""Ready-made prompt functions for ``prompt_func`` (a function of one row that returns the prompt text).

``alpaca_prompt`` writes the Stanford Alpaca prompt, which has two forms: with an
``input`` column that gives context, and without it (empty or missing). Use it with the
completion in the ``output`` column::

    dataset:
      _target_: nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
      path_or_dataset_id: data/alpaca.jsonl
      prompt_func: nemo_like.components.datasets.llm.prompt_functions.alpaca_prompt
      completion_template: "{output}"
"""

from __future__ import annotations

from typing import Any

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(row: dict[str, Any]) -> str:
    """The Alpaca prompt of a row with ``instruction`` and an optional ``input``."""
    context = row.get("input")
    if context is None or not str(context).strip():
        return ALPACA_WITHOUT_INPUT.format(instruction=row["instruction"])
    return ALPACA_WITH_INPUT.format(instruction=row["instruction"], input=context)
