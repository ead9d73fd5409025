"""The ``evaluation:`` section (lm-eval after training), checked at set-up.

A typo, user code in ``include_path`` that the gate has not been told to allow, or a missing
lm-eval stops the run before training, not after it.
"""

from __future__ import annotations

from typing import Any

from nemo_like.components.loggers.optional import import_optional
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.config.target_gate import check_user_code

EVALUATION_KEYS = frozenset({"tasks", "limit", "batch_size", "apply_chat_template", "include_path", "num_fewshot",
                             "output", "log_samples"})


def evaluation_section(cfg: ConfigNode) -> dict[str, Any] | None:
    """The validated ``evaluation:`` section as a dict (None when the recipe has none); needs the ``eval`` extra."""
    node = cfg.get("evaluation") if "evaluation" in cfg else None
    section = node.to_dict() if node is not None else None
    if not section:
        return None
    unknown = sorted(set(section) - EVALUATION_KEYS)
    if unknown:
        raise ConfigError(f"evaluation.{unknown[0]}: not an evaluation key (known: {', '.join(sorted(EVALUATION_KEYS))})")
    if not section.get("tasks"):
        raise ConfigError("evaluation.tasks: required (e.g. [nemo_like_quickstart])")
    check_user_code(section.get("include_path"), "evaluation.include_path",
                    "lm-eval imports the Python files its task YAMLs name with !function")
    import_optional("lm_eval", "eval", "evaluation")
    return section
