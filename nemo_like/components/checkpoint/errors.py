"""The one error a checkpoint problem raises, kept apart so every checkpoint part can raise it."""

from __future__ import annotations

from nemo_like.config.errors import ConfigError

FRESH_HINT = "use --checkpoint.restore_from none to start fresh, or another checkpoint.checkpoint_dir"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be saved or resumed here (missing, damaged, of another model); one line."""
