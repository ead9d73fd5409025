"""One searched parameter: its kind and range, checked once, then asked of an Optuna trial.

A search space is keyed by the override path it sets (``optimizer.lr``), so a trial's
parameters are exactly the ``--optimizer.lr 3e-4`` a user would type to rerun it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from nemo_like.config.errors import ConfigError

KINDS = ("int", "float", "uniform", "loguniform", "categorical")
_ALLOWED_KEYS = {
    "int": {"type", "low", "high", "step", "log"},
    "float": {"type", "low", "high", "step", "log"},
    "uniform": {"type", "low", "high", "step"},
    "loguniform": {"type", "low", "high"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class ParamSpec:
    """``kind`` is one of ``KINDS``; numeric kinds use low/high (step, log), categorical uses choices."""

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value Optuna picks for this path in ``trial`` (an ``optuna.Trial``)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        log = self.log or self.kind == "loguniform"
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=log)

    def grid_values(self) -> list[Any] | None:
        """The values a grid search walks through; None when the range is continuous."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            count = int(math.floor((float(self.high) - float(self.low)) / float(self.step) + 1e-9)) + 1
            return [float(self.low) + i * float(self.step) for i in range(count)]
        return None


def parse_param(path: str, spec: Any, at: Callable[[str], str]) -> ParamSpec:
    """Check one ``search_space`` entry; ``at(".low")`` names a key of it (with file:line) in the one-line error."""
    where = at("")
    if isinstance(spec, (list, tuple)):  # a bare list of values is a categorical choice
        spec = {"type": "categorical", "choices": list(spec)}
    if not hasattr(spec, "get") or not hasattr(spec, "keys"):
        raise ConfigError(f"{where}: expects a mapping like {{type: loguniform, low: 1e-6, high: 1e-3}} "
                          f"or a list of choices, got {spec!r}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{at('.type')}: {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(map(str, spec.keys())) - _ALLOWED_KEYS[kind])
    if unknown:
        raise ConfigError(f"{where}: '{unknown[0]}' is not a key of a {kind} parameter "
                          f"(keys: {', '.join(sorted(_ALLOWED_KEYS[kind]))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{at('.choices')}: expects a non-empty list, got {choices!r}")
        for value in choices:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise ConfigError(f"{at('.choices')}: {value!r} is not a number, string, bool or none "
                                  "(Optuna stores only those)")
        return ParamSpec(path, kind, choices=tuple(choices))
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at('.' + name)}: expects a number, got {value!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: an int parameter needs whole low/high, got {low!r} and {high!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}")
    if (kind == "loguniform" or log) and low <= 0:
        raise ConfigError(f"{at('.low')}: a log-scaled range must start above 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise ConfigError(f"{at('.step')}: expects a positive number, got {step!r}")
        if log:
            raise ConfigError(f"{where}: Optuna takes either step or log, not both")
    return ParamSpec(path, kind, low=low, high=high, step=step, log=log)
