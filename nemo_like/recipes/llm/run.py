"""Shared entry: parse ``--config`` and overrides, check every section, then run the recipe.

The whole config is checked before torch or transformers are imported, so a mistake in it is
one line within a second. User errors (config, data, checkpoint, a missing file) are one line
and exit 2; a non-finite loss stops the run with one line and exit 3; a run stopped by SIGTERM/SIGINT saves and exits 128 + the signal (143 / 130), as a
scheduler expects of a preempted job; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.config.errors import ConfigError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3  # a non-finite loss or gradient norm stopped the run (nan_policy: error)


# method -> (its config module, schema, check, and its recipe class), imported only when that method runs
METHODS = {
    "sft": ("nemo_like.recipes.llm.sft_config", "SFT_SCHEMA", "check_sft_config",
            "nemo_like.recipes.llm.train_ft", "TrainFinetuneRecipeForNextTokenPrediction"),
    "dpo": ("nemo_like.recipes.llm.dpo_config", "DPO_SCHEMA", "check_dpo_config",
            "nemo_like.recipes.llm.train_dpo", "TrainDPORecipe"),
    "grpo": ("nemo_like.recipes.llm.grpo_config", "GRPO_SCHEMA", "check_grpo_config",
             "nemo_like.recipes.llm.train_grpo", "TrainGRPORecipe"),
    "vlm": ("nemo_like.recipes.vlm.vlm_config", "VLM_SCHEMA", "check_vlm_config",
            "nemo_like.recipes.vlm.finetune", "FinetuneRecipeForVLM"),
}


def load_method_config(argv: list[str], default_config: str | None, method: str) -> tuple[str, Any]:
    """The config from ``--config`` and overrides, and the method that runs it: an SFT entry given an
    image-text config (``recipe: FinetuneRecipeForVLM``, or an image-text-to-text model) runs the VLM recipe."""
    import importlib

    from nemo_like.config.arg_parser import parse_args_and_load_config

    def schema_of(name: str) -> Any:
        return getattr(importlib.import_module(METHODS[name][0]), METHODS[name][1])

    known = schema_of(method).override_names
    if method == "sft":
        known = known | schema_of("vlm").override_names
    cfg = parse_args_and_load_config(argv, default_config=default_config, known_sections=known)
    if method == "sft":
        from nemo_like.recipes.vlm.vlm_config import is_vlm_config

        method = "vlm" if is_vlm_config(cfg) else method
    return method, cfg


def main(argv: list[str] | None = None, default_config: str | None = None, method: str = "sft") -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    cfg = None
    try:
        method, cfg = load_method_config(argv, default_config, method)
        config_module, _, check_name, recipe_module, recipe_name = METHODS[method]
        getattr(importlib.import_module(config_module), check_name)(cfg)
    except ConfigError as e:
        return _user_error(e, cfg)
    try:
        recipe = getattr(importlib.import_module(recipe_module), recipe_name)(cfg)
        recipe.setup()
        result = recipe.run_train_validation_loop()
    except (ConfigError, DatasetError, OSError) as e:
        return _user_error(e, cfg)
    except RuntimeError as e:
        from nemo_like.components.training.nan_policy import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        if "torch" in sys.modules:
            from nemo_like.components.distributed.init import destroy_distributed

            destroy_distributed()
    signum = result.get("stopped_by_signal")
    return 128 + signum if signum else 0


def _user_error(err: BaseException, cfg: Any = None) -> int:
    text = " ".join(str(err).split("\n"))
    if isinstance(err, OSError) and not isinstance(err, (ConfigError, DatasetError)) and err.filename:
        text = f"{err.filename}: {err.strerror or text}"
    print(f"error: {_without_env_values(text, cfg)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _without_env_values(text: str, cfg: Any) -> str:
    """An error may quote a value; one read from the environment (a token, say) is masked there too.

    Paths are the exception: a data or checkpoint location is what the message must show.
    """
    for path in getattr(cfg, "env_paths", ()):
        value = str(cfg.get(path))
        if len(value) >= 6 and os.sep not in value:
            text = text.replace(value, "***")
    return text
