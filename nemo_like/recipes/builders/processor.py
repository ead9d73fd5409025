"""The ``processor`` section (or, without one, the processor that ships with the model) of an image-text recipe."""

from __future__ import annotations

from typing import Any

from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode


def build_processor(cfg: ConfigNode, model_id: str | None) -> Any:
    """``processor:`` built from its ``_target_`` (its ``pretrained_model_name_or_path`` defaulting to the model's),
    else ``transformers.AutoProcessor`` from the model's directory; local copies of hub ids are found as the
    model loader finds them."""
    from nemo_like._transformers.embedded import resolve_pretrained_path
    from nemo_like._transformers.processor import load_processor

    section = cfg.get("processor", None)
    path = section.get("pretrained_model_name_or_path", None) if section is not None else None
    path = path or model_id
    if not isinstance(path, str) or not path:
        raise ConfigError("processor.pretrained_model_name_or_path: needed (or model.pretrained_model_name_or_path)")
    try:
        resolved = resolve_pretrained_path(path)
    except (OSError, FileNotFoundError) as err:
        raise ConfigError(f"processor: {err}") from None
    if section is not None:  # the schema has checked it names a _target_
        try:
            return section.instantiate(pretrained_model_name_or_path=resolved)
        except ImportError as err:  # a part it will not use (a video processor) needs a missing library
            if "video" not in str(err).lower():
                raise
            extra = {k: v for k, v in section.to_dict().items() if k not in ("_target_", "pretrained_model_name_or_path")}
            return load_processor(resolved, **extra)
    try:
        return load_processor(resolved)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained_model_name_or_path: cannot load a processor from {path!r} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
