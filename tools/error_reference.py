"""The error-message reference page: every ``ConfigError``, ``DatasetError`` or ``CheckpointError`` message
constructed in ``nemo_like/``, read from the source with ``ast`` and grouped by area (written by
``tools/gen_config_reference.py``, beside the configuration reference)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ERRORS_PAGE = REPO / "docs" / "reference" / "errors.md"

# ---------------------------------------------------------------------------------------------------- errors

ERROR_CLASSES = {"ConfigError", "DatasetError", "CheckpointError", "DiskFullError", "NonFiniteWeightsError"}

# (path prefix, area title, what to do). The first matching prefix wins.
AREAS = [
    ("nemo_like/config/", "Reading the YAML, overrides and the import gate",
     "The message names the key and where it was written (`file.yaml:LINE` or `--a.b`). Fix the value there; "
     "for a refused `_target_` see [What a recipe may build](../recipes.md#what-a-recipe-may-build)."),
    ("nemo_like/components/checkpoint/", "Checkpoints and resume",
     "The message names the file. A run resumes from `LATEST`: point `checkpoint.restore_from` at an intact step "
     "directory, or start fresh with `--checkpoint.restore_from none` (see [Checkpoints and resume](../checkpoints.md))."),
    ("nemo_like/components/datasets/", "Data",
     "The message names the file and line of the row (`data.jsonl:3`) or the dataset argument. Fix the row or the "
     "`dataset:` arguments; `column_mapping` renames columns."),
    ("nemo_like/components/distributed/", "Distributed layout",
     "Sizes must multiply to the ranks launched; see [Distributed training](../distributed.md)."),
    ("nemo_like/components/tuning/", "Tuning and the advisor",
     "The message names the `tuning.` key and its `file:line`; see [Tuning](../methods/tuning.md)."),
    ("nemo_like/components/", "Other components",
     "The message names the section and the argument; see the [configuration reference](configuration.md)."),
    ("nemo_like/recipes/", "Recipe sections and building parts",
     "The message names the key and its `file:line`; `nemo-like config-fields SECTION` lists the valid fields, "
     "and the [configuration reference](configuration.md) lists them all."),
    ("nemo_like/_transformers/", "Model loading",
     "Check `model.pretrained_model_name_or_path` (a local directory, a GGUF file, or a hub id with the hub in reach)."),
    ("nemo_like/", "Command line",
     "Run `nemo-like COMMAND --help` for the options."),
]


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _expr_text(node: ast.expr) -> str:
    """A placeholder for an interpolated expression: ``{name}`` for simple names, ``{key (file:line)}`` for
    ``located(...)``, ``{; did you mean ...}`` for ``did_you_mean(...)``, else ``{...}``."""
    if isinstance(node, ast.Call):
        name = _call_name(node.func)
        if name == "located" or name == "where":
            return "{key (file:line)}"
        if name == "at":
            return "{tuning.key (file:line)}"
        if name == "did_you_mean":
            return "{; did you mean ...?}"
        if name in ("repr", "str", "type"):
            return _expr_text(node.args[0]) if node.args else "{...}"
        if name == "join":
            return "{...}"
    if isinstance(node, ast.Name):
        return _CONSTANTS.get(node.id, "{" + node.id + "}")
    if isinstance(node, ast.Attribute):
        return "{type}" if node.attr == "__name__" else "{" + node.attr + "}"
    if isinstance(node, ast.Subscript):
        return _expr_text(node.value)
    return "{...}"


_CONSTANTS: dict[str, str] = {}  # the module-level string constants of the file being read


def _module_constants(tree: ast.Module) -> dict[str, str]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            text = _message(node.value)
            if text is not None and isinstance(node.value, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                found[node.targets[0].id] = text
    return found


def _message(node: ast.expr | None) -> str | None:
    """The message text of the first argument, with placeholders; None when it is computed elsewhere."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(_expr_text(value.value))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message(node.left), _message(node.right)
        return (left if left is not None else _expr_text(node.left)) + (
            right if right is not None else _expr_text(node.right))
    if isinstance(node, ast.IfExp):
        a, b = _message(node.body), _message(node.orelse)
        if a is not None and b is not None:
            return f"{a}  /  {b}"
    return None


def error_sites() -> list[tuple[str, str, str]]:
    """``(file, class, message)`` for every construction of a user-facing error in ``nemo_like/``."""
    sites = []
    paths = sorted((REPO / "nemo_like").rglob("*.py"))
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in paths}
    shared: dict[str, str | None] = {}  # constants imported from another module: a name with one value everywhere
    for tree in trees.values():
        _CONSTANTS.clear()
        for name, value in _module_constants(tree).items():
            shared[name] = value if shared.get(name, value) == value else None
    for path in paths:
        rel = path.relative_to(REPO).as_posix()
        tree = trees[path]
        _CONSTANTS.clear()
        _CONSTANTS.update({k: v for k, v in shared.items() if v is not None})
        _CONSTANTS.update(_module_constants(tree))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _call_name(node.func) not in ERROR_CLASSES:
                continue
            first = node.args[0] if node.args else None
            text = _message(first)
            if text is None:
                text = "(message built at run time: " + (ast.unparse(first) if first is not None else "none") + ")"
            sites.append((rel, _call_name(node.func), " ".join(text.split())))
    return sites


def _area(rel: str) -> tuple[str, str]:
    for prefix, title, fix in AREAS:
        if rel.startswith(prefix):
            return title, fix
    raise AssertionError(rel)


def errors_page() -> str:
    sites = error_sites()
    grouped: dict[str, dict[str, list[str]]] = {}
    for rel, _, text in sites:
        title, _ = _area(rel)
        messages = grouped.setdefault(title, {}).setdefault(rel, [])
        if text not in messages:
            messages.append(text)
    total = sum(len(m) for files in grouped.values() for m in files.values())
    out = [
        "# Error messages",
        "",
        "<!-- Generated by tools/gen_config_reference.py from the source; do not edit by hand. -->",
        "",
        f"Every message of a configuration, data or checkpoint error the library can raise ({total} messages),",
        "as written in the source, grouped by area and file. `{...}` stands for a value filled in at run time;",
        "`{key (file:line)}` is the key and where it was written. The command-line entry points print such",
        "an error as one line, `error: <message>`, and exit with code 2. Most messages end with their fix;",
        "each area starts with what to do in general. The common cases are explained in",
        "[Troubleshooting](../troubleshooting.md).",
        "",
    ]
    order = [title for _, title, _ in AREAS]
    for title in order:
        if title not in grouped:
            continue
        fix = next(f for _, t, f in AREAS if t == title)
        out += [f"## {title}", "", fix, ""]
        for rel in sorted(grouped[title]):
            out += [f"### `{rel}`", ""]
            for text in grouped[title][rel]:
                out.append(f"- {_code(text)}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _code(text: str) -> str:
    """``text`` as an inline code span that survives backticks inside it."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
