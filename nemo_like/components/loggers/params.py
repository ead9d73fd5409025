"""The run's resolved config as flat ``section.key`` params, the shape every experiment tracker takes.

Secrets are the caller's to remove first (the recipe passes ``config.secrets.redact_config(cfg)``):
one rule, applied where the config leaves the run, not again in each part.
"""

from __future__ import annotations

from typing import Any


def flatten_params(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1e-5}}`` -> ``{"optimizer.lr": 1e-5}``; list items get their index.

    Scalars (str, int, float, bool, None) are kept as they are; give it an already-redacted config.
    """
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    flat: dict[str, Any] = {}
    if isinstance(config, dict):
        items = [(str(k), v) for k, v in config.items()]
    elif isinstance(config, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(config)]
    else:
        return {prefix: config} if prefix else {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, (dict, list, tuple)) or hasattr(value, "to_dict"):
            nested = flatten_params(value, name)
            flat.update(nested if nested else {name: str(value)})
        else:
            flat[name] = value
    return flat


def numeric_metrics(record: dict[str, Any], prefix: str, skip: tuple[str, ...] = ("step", "epoch")) -> dict[str, float]:
    """The numbers of one metrics record, keys prefixed for a tracker (``train/loss``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{prefix}/{key}"] = float(value)
    return out
