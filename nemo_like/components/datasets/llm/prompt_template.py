"""Prompt and completion text written from a row's columns: a ``str.format`` template or a function.

Why both: a template covers the common case in one YAML line (``"{question}\n\nAnswer:\n"``);
a function covers rows that need logic (Alpaca's prompt differs when ``input`` is empty).
This part takes the function itself: a path written in YAML is resolved through the import gate
by the recipe's data builder, so a function in a user's file (``path/to/file.py:fn``) needs
``NEMO_LIKE_ENABLE_USER_MODULES=1`` like any other user code.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError

# `{'dialogue'}` / `{"dialogue"}`: quoted field names, as some published configs write them.
_QUOTED_FIELD = re.compile(r"\{(['\"])(\w+)\1\}")


class RowFormatter:
    """Turns a row (a dict of columns) into text; errors name the row and the config key."""

    def __init__(self, key: str, template: str | None = None, func: Callable[[dict[str, Any]], Any] | None = None):
        self.key = key
        self.template = template
        self.func = func

    def __call__(self, where: str, row: dict[str, Any]) -> str:
        if self.template is not None:
            try:
                return self.template.format_map(row)
            except KeyError as e:
                raise DatasetError(
                    f"{where}: dataset.{self.key} names column {e.args[0]!r}, which the row lacks; "
                    f"the row has {sorted(row)}"
                ) from None
            except (IndexError, ValueError, AttributeError, TypeError) as e:
                raise DatasetError(f"{where}: dataset.{self.key} cannot be filled from this row ({e})") from None
        assert self.func is not None
        try:
            text = self.func(dict(row))
        except KeyError as e:
            raise DatasetError(
                f"{where}: dataset.{self.key} looked up column {e.args[0]!r}, which the row lacks; "
                f"the row has {sorted(row)}"
            ) from None
        if not isinstance(text, str):
            raise DatasetError(f"{where}: dataset.{self.key} returned {type(text).__name__}, not a string")
        return text


def _checked_template(key: str, template: Any) -> str:
    if not isinstance(template, str):
        raise DatasetError(f"dataset.{key}: expected a string template, got {type(template).__name__}")
    template = _QUOTED_FIELD.sub(r"{\2}", template)
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:
        raise DatasetError(f"dataset.{key}: not a valid format template ({e}): {template!r}") from None
    if any(field == "" or field.isdigit() for field in fields):
        raise DatasetError(f"dataset.{key}: name a column in every {{}} (e.g. {{question}}): {template!r}")
    return template


def row_formatter(
    role: str, template: Any = None, func: Callable[[dict[str, Any]], Any] | None = None
) -> RowFormatter | None:
    """The ``{role}_template`` / ``{role}_func`` pair of a dataset config as one formatter (None when unset)."""
    template_key, func_key = f"{role}_template", f"{role}_func"
    if template is not None and func is not None:
        raise DatasetError(f"dataset.{template_key} and dataset.{func_key}: set only one of the two")
    if template is not None:
        return RowFormatter(template_key, template=_checked_template(template_key, template))
    if func is None:
        return None
    if isinstance(func, str):
        raise DatasetError(f"dataset.{func_key}: {func!r} is an import path; pass the function itself "
                           "(a recipe's data builder resolves the path through the import gate)")
    if not callable(func):
        raise DatasetError(f"dataset.{func_key}: {func!r} is not callable")
    return RowFormatter(func_key, func=func)
