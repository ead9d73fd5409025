"""Shared entry: parse ``--config`` and overrides, run the recipe, turn user errors into one line."""

from __future__ import annotations

import sys

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.config.loader import ConfigError


def main(argv: list[str] | None = None, default_config: str | None = None) -> int:
    from nemo_like.config.arg_parser import parse_args_and_load_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args_and_load_config(argv, default_config=default_config)
        recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
        recipe.setup()
        recipe.run_train_validation_loop()
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from nemo_like.components.distributed.init import destroy_distributed

        destroy_distributed()
    return 0
