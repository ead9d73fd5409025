"""`${...}` and `$VAR` in recipe values: environment variables and references between keys.

Recipes written for Hydra/OmegaConf reuse values with `${optimizer.lr}`; recipes written for
NeMo AutoModel read the environment with `${VAR}`, `${VAR,default}`, `$VAR` and
`${oc.env:VAR,default}`. Both spellings share `${...}`, so each one is classified here:

- `${oc.env:NAME}` / `${oc.env:NAME,default}` and `${NAME,default}`: environment.
- `${.key}`, `${a.b}`, `${a.list[0]}` (a relative or dotted path): a key reference.
- `${NAME}` (no dot): a key reference when the config has a top-level key NAME, else environment.
- `$NAME` / `$NAME.part` (no braces): environment.
- `\\${...}` and `\\$NAME` are literal text; any other `${name:...}` resolver is refused, so a
  recipe cannot reach a resolver that decodes, creates or evaluates anything.

Environment values are substituted here; key references are resolved by OmegaConf on a copy
of the tree in which every other string is escaped, so neither an environment value nor a
plain string can turn into an interpolation. Values read from the environment, and values
that copy them by reference, are recorded in ``env_paths`` and never written out in plain form.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from nemo_like.config.errors import ConfigError

__all__ = ["Template", "escape_for_omegaconf", "resolve_templates"]

_DOLLAR_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
_KEY_PATH = re.compile(r"^(?:\.+|\.*[\w\-]+(?:\[\d+\])*)(?:\.[\w\-]+(?:\[\d+\])*)*$")
_ENV_OC = "oc.env:"


class Template(str):
    """A recipe string holding `$` forms still to resolve; `plain` when it was an unquoted scalar
    (then the resolved text is typed like a literal, as any unquoted value is)."""

    plain: bool

    def __new__(cls, text: str, plain: bool) -> "Template":
        obj = super().__new__(cls, text)
        obj.plain = plain
        return obj

    def __reduce__(self) -> tuple:
        return (Template, (str(self), self.plain))


@dataclass
class _Plan:
    """One template taken apart: OmegaConf text (key refs kept, the rest escaped) and what it read."""

    omega_text: str
    text: str  # the final text when there are no key references
    key_refs: list[str] = field(default_factory=list)
    read_env: bool = False
    whole_ref: bool = False  # the value is exactly one `${key}`: keep the referenced value's type


def escape_for_omegaconf(text: str) -> str:
    """Text that OmegaConf reads back unchanged: `${` and the backslashes before it are escaped."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def _escape_tail(text: str) -> str:
    """Literal text that is followed by a `${ref}`: its trailing backslashes must not escape it."""
    text = escape_for_omegaconf(text)
    stripped = text.rstrip("\\")
    return stripped + (len(text) - len(stripped)) * 2 * "\\"


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _env(name: str, default: str | None, where: str, template: str, key_hint: bool) -> str:
    if name in os.environ:
        return os.environ[name]
    if default is not None:
        return default
    also = f" and the config has no top-level key '{name}'" if key_hint else ""
    raise ConfigError(
        f"{where}: environment variable '{name}' is not set{also} (in {template!r}); "
        f"export it or give a default as ${{{name},default}}"
    )


def _plan(template: str, where: str, top_keys: set[str]) -> _Plan:
    """Split one template into literal text, environment values and key references."""
    pieces: list[tuple[str, str]] = []  # ("lit" | "ref", text)
    read_env = False
    i, n = 0, len(template)
    lit: list[str] = []

    def flush() -> None:
        if lit:
            pieces.append(("lit", "".join(lit)))
            lit.clear()

    while i < n:
        c = template[i]
        if c == "\\":
            j = i
            while j < n and template[j] == "\\":
                j += 1
            if j < n and template[j] == "$" and (template.startswith("${", j) or _DOLLAR_NAME.match(template, j)):
                lit.append("\\" * ((j - i) // 2))
                if (j - i) % 2:  # an escaped `$`: literal
                    lit.append("$")
                    j += 1
                i = j
            else:
                lit.append(template[i:j])
                i = j
            continue
        if c != "$":
            lit.append(c)
            i += 1
            continue
        if template.startswith("${", i):
            end = template.find("}", i + 2)
            if end == -1:
                lit.append(c)
                i += 1
                continue
            if "${" in template[i + 2:end]:
                raise ConfigError(f"{where}: nested interpolation is not supported (in {template!r})")
            body = template[i + 2:end].strip()
            i = end + 1
            if body.startswith(_ENV_OC):
                name, comma, default = body[len(_ENV_OC):].partition(",")
                lit.append(_env(name.strip(), _unquote(default) if comma else None, where, template, False))
                read_env = True
            elif "," in body:
                name, _, default = body.partition(",")
                lit.append(_env(name.strip(), _unquote(default), where, template, False))
                read_env = True
            elif ":" in body:
                resolver = body.split(":", 1)[0]
                raise ConfigError(
                    f"{where}: resolver '{resolver}' is not available (in {template!r}); only ${{oc.env:VAR}}, "
                    f"${{VAR}}, $VAR and key references like ${{section.key}} are"
                )
            elif not _KEY_PATH.match(body):
                raise ConfigError(f"{where}: '${{{body}}}' is neither a key path nor an environment variable "
                                  f"(in {template!r})")
            elif "." in body or "[" in body or body in top_keys:
                flush()
                pieces.append(("ref", body))
            else:
                lit.append(_env(body, None, where, template, True))
                read_env = True
            continue
        match = _DOLLAR_NAME.match(template, i)
        if match:
            lit.append(_env(match.group(1), None, where, template, False))
            read_env = True
            i = match.end()
        else:
            lit.append(c)
            i += 1
    flush()
    refs = [text for kind, text in pieces if kind == "ref"]
    omega: list[str] = []
    for index, (kind, text) in enumerate(pieces):
        if kind == "ref":
            omega.append("${" + text + "}")
        elif index + 1 < len(pieces):
            omega.append(_escape_tail(text))
        else:
            omega.append(escape_for_omegaconf(text))
    plain_text = "".join(text for kind, text in pieces if kind == "lit")
    return _Plan("".join(omega), plain_text, refs, read_env, whole_ref=len(pieces) == 1 and bool(refs))


# --------------------------------------------------------------------------- the tree walk
Slot = tuple[Any, Any, str]  # (container, key or index, dotted path)


def _slots(node: Any, path: str, is_node: Callable[[Any], bool]) -> list[Slot]:
    """Every template leaf as (its container, its key, its dotted path)."""
    found: list[Slot] = []
    items = (node.items() if is_node(node) or isinstance(node, dict)
             else enumerate(node) if isinstance(node, list) else ())
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, Template):
            found.append((node, key, where))
        elif is_node(value) or isinstance(value, (dict, list)):
            found.extend(_slots(value, where, is_node))
    return found


def _to_omega_tree(value: Any, plans: dict[int, _Plan], is_node: Callable[[Any], bool]) -> Any:
    """Plain containers for OmegaConf: templates as planned, every other string escaped."""
    if is_node(value) or isinstance(value, dict):
        return {(k if isinstance(k, (str, int, bool, float)) else str(k)): _to_omega_tree(v, plans, is_node)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_omega_tree(v, plans, is_node) for v in value]
    if isinstance(value, Template):
        return plans[id(value)].omega_text
    if isinstance(value, str):
        return escape_for_omegaconf(value)
    return value


def _absolute(ref: str, path: str) -> str:
    """The dotted path a reference names, seen from the leaf at `path` (for env tracking)."""
    ref = re.sub(r"\[(\d+)\]", r".\1", ref)
    if not ref.startswith("."):
        return ref
    dots = len(ref) - len(ref.lstrip("."))
    base = path.split(".")[:-1]
    base = base[: len(base) - (dots - 1)] if dots > 1 else base
    rest = ref.lstrip(".")
    return ".".join(base + ([rest] if rest else []))


def resolve_templates(
    root: Any, sources: dict[str, str], env_paths: set[str], located: Callable[[str], str],
    is_node: Callable[[Any], bool], parse_literal: Callable[[str], Any],
    wrap: Callable[[Any, str], Any] = lambda value, path: value,
) -> None:
    """Resolve every template leaf under `root` in place; errors are one line naming key and source."""
    slots = _slots(root, "", is_node)
    if not slots:
        return
    top_keys = {str(k) for k in root.keys()}
    plans: dict[int, _Plan] = {}
    with_refs: list[tuple[Slot, Template, _Plan]] = []
    for slot in slots:
        container, key, path = slot
        template = container[key]
        plan = _plan(str(template), located(path), top_keys)
        plans[id(template)] = plan
        if plan.key_refs:
            with_refs.append((slot, template, plan))
            continue
        container[key] = wrap(parse_literal(plan.text) if template.plain else plan.text, path)
        if plan.read_env:
            env_paths.add(path)
    if not with_refs:
        return
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    tree = OmegaConf.create(_to_omega_tree(root, plans, is_node), flags={"allow_objects": True})
    resolved: list[tuple[Slot, Any]] = []
    for slot, template, plan in with_refs:
        container, key, path = slot
        parts = path.split(".") if _reachable(root, path, is_node) else None
        try:
            value = _select(tree, parts) if parts is not None else _select_by_walk(tree, root, container, key, is_node)
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            raise ConfigError(_omega_message(err, path, str(template), located)) from None
        except RecursionError:
            raise ConfigError(f"{located(path)}: interpolation {str(template)!r} is circular") from None
        if not plan.whole_ref and isinstance(value, str) and template.plain:
            value = parse_literal(value)
        resolved.append((slot, value))
        if plan.read_env:
            env_paths.add(path)
        for ref in plan.key_refs:
            target = _absolute(ref, path)
            for env_path in list(env_paths):
                if env_path == target or target.startswith(env_path + "."):
                    env_paths.add(path)
                elif env_path.startswith(target + "."):
                    env_paths.add(path + env_path[len(target):])
    for (container, key, path), value in resolved:
        container[key] = wrap(value, path)


def _reachable(root: Any, path: str, is_node: Callable[[Any], bool]) -> bool:
    """True when the dotted path reaches its leaf (no key on the way holds a dot itself)."""
    node: Any = root
    for part in path.split("."):
        if (is_node(node) or isinstance(node, dict)) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _select(tree: Any, parts: list[str]) -> Any:
    node = tree
    for part in parts:
        node = node[int(part)] if type(node).__name__ == "ListConfig" else node[part]
    return node


def _select_by_walk(tree: Any, root: Any, container: Any, key: Any, is_node: Callable[[Any], bool]) -> Any:
    """Find the leaf's twin in the OmegaConf tree by identity of its container (keys holding dots)."""
    def walk(node: Any, twin: Any) -> Any:
        if node is container:
            return twin[key]
        items = (node.items() if is_node(node) or isinstance(node, dict)
                 else enumerate(node) if isinstance(node, list) else ())
        for k, v in items:
            if is_node(v) or isinstance(v, (dict, list)):
                k2 = k if isinstance(k, (str, int, bool, float)) else str(k)
                found = walk(v, twin[k2])
                if found is not _NOT_FOUND:
                    return found
        return _NOT_FOUND

    return walk(root, tree)


_NOT_FOUND = object()


def _omega_message(err: Exception, path: str, template: str, located: Callable[[str], str]) -> str:
    """OmegaConf's complaint as one line on the key that holds the reference."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    full_key = re.sub(r"\[(\d+)\]", r".\1", str(getattr(err, "full_key", "") or ""))
    where = located(path)
    if full_key and full_key != path:
        where += f" (while resolving {located(full_key)})"
    if "Recursive interpolation" in first:
        return f"{where}: interpolation {template!r} is circular (it refers back to itself)"
    missing = re.match(r"Interpolation key '([^']*)' not found", first)
    if missing:
        return f"{where}: interpolation {template!r} refers to no key '{missing.group(1)}'"
    return f"{where}: cannot resolve {template!r}: {first}"
