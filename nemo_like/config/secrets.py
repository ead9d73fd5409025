"""One rule for what is secret in a config, used wherever a config leaves the process.

A value is secret when its key looks like a credential (``hf_token``, ``wandb.key``,
``aws_secret_access_key``, ``private_key``, ...) or when it came from the environment through
``${oc.env:VAR}``, ``${VAR}``, ``${VAR,default}`` or ``$VAR`` (or copies such a value by
``${a.b}``): the environment is where people keep tokens, and a resumed run reads them again
from there. Saved ``config.yaml`` files, console lines, JSONL logs and tracker
params all go through ``redact_config`` / ``is_secret_key``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "SECRET_KEY_PATTERN", "is_secret_key", "redact_config"]

REDACTED = "***"
SECRET_KEY_PATTERN = re.compile(
    r"(^|_)(hf|hub|access|auth|api|bearer|refresh|session|github|wandb|mlflow)_?token$"
    r"|^token$|^key$|api_?key$|(^|_)secret|private_?key|access_?key|password|passwd|credential|^authorization$",
    re.IGNORECASE,
)


def is_secret_key(name: object) -> bool:
    """True for config keys whose values are credentials (``pad_token`` or ``max_new_tokens`` are not)."""
    return bool(SECRET_KEY_PATTERN.search(str(name)))


def redact_config(config: Any, env_paths: set[str] | frozenset[str] | None = None) -> Any:
    """A plain copy of ``config`` with credential-like keys and environment-sourced values replaced by ``***``.

    ``env_paths`` defaults to the dotted keys a ConfigNode recorded as read from the environment.
    """
    if env_paths is None:
        env_paths = getattr(config, "env_paths", frozenset())
    plain = config.to_dict() if hasattr(config, "to_dict") else config
    return _redact(plain, "", env_paths)


def _redact(value: Any, path: str, env_paths: set[str] | frozenset[str]) -> Any:
    if path in env_paths and value is not None:
        return REDACTED
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(k) and v is not None and not isinstance(v, (dict, list))
            else _redact(v, f"{path}.{k}" if path else str(k), env_paths)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(v, f"{path}.{i}" if path else str(i), env_paths) for i, v in enumerate(value)]
    return value
