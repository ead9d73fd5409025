"""Optional packages (trackers, plotting, lm-eval) are imported where used, never at package import."""

from __future__ import annotations

import importlib
from types import ModuleType

from nemo_like.config.errors import ConfigError


class MissingExtraError(ConfigError, ImportError):
    """An optional package is absent: one line that names the extra which installs it."""


def import_optional(module: str, extra: str, section: str) -> ModuleType:
    """Import ``module`` or fail with ``section: needs X; pip install 'nemo_like[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or module
        raise MissingExtraError(
            f"{section}: needs the '{missing}' package, which is not installed; pip install 'nemo_like[{extra}]'"
        ) from err
