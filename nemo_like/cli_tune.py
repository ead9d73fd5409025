"""``nemo-like tune -c tune.yaml``: search a recipe's hyperparameters with Optuna, one process per trial."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from nemo_like.config.errors import ConfigError

if TYPE_CHECKING:
    from nemo_like.recipes.tune.tune_config import TuneConfig

USAGE = """usage: nemo-like tune -c TUNE.yaml [--tuning.key VALUE ...] [--section.key VALUE ...]

Runs a recipe once per trial with parameters Optuna proposes, and keeps what it learns in a
study (SQLite in output_dir): run the same command again to resume it.
  --tuning.n_trials 8      change a tuning key
  --optimizer.weight_decay 0.01   any other override is applied to every trial's recipe

example tune.yaml:
  tuning:
    recipe: recipes/smollm2_135m/sft_quickstart.yaml   # its method (finetune, dpo, grpo) runs each trial
    output_dir: tuning/quickstart_lora
    n_trials: 8
    sampler: {_target_: optuna.samplers.TPESampler, seed: 42}
    pruner: {_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}   # fed val_loss at each validation
    search_space:
      optimizer.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
      peft.dim: {type: categorical, choices: [4, 8, 16]}
    objectives: [{metric: val_loss, direction: minimize}]   # last validation's; reduce: best for the lowest
    keep_checkpoints: best        # best | all | none
    overrides: {step_scheduler.max_steps: 20}

output_dir then holds trial_<n>/ (trial.yaml, run.log, the run's logs), trials_results.csv,
best_trial.yaml (several objectives: pareto_front.csv and pareto/trial_<n>.yaml) and optimization.png.
Oumi's tune field names (tunable_training_params, evaluation_metrics, tuner_sampler, ...) are read too.
"""


def tune_main(argv: list[str]) -> int:
    """Parse, check the whole config, then run or resume the study; a mistake is one ``error:`` line (exit 2)."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        tc = load_tune_config(argv)
        from nemo_like.recipes.tune.study import run_study

        result = run_study(tc, say=lambda line: print(line, flush=True))
    except ConfigError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume the study", file=sys.stderr)
        return 130
    return 0 if result["best"] else 1


def load_tune_config(argv: list[str]) -> TuneConfig:
    """The ``TuneConfig`` of ``-c FILE`` and its overrides: ``--tuning.*`` change the tuning section, any other
    ``--a.b`` joins the overrides of every trial."""
    from nemo_like.recipes.tune.tune_config import parse_tune_config
    from nemo_like.config.arg_parser import parse_cli
    from nemo_like.config.loader import ConfigNode, load_yaml_config

    path, overrides = parse_cli(argv)
    if not path:
        raise ConfigError("no tune file given; pass -c tune.yaml (see nemo-like tune --help)")
    raw = load_yaml_config(path, resolve=False)
    if "tuning" not in raw:
        raise ConfigError(f"{path}: no 'tuning:' section (see nemo-like tune --help)")
    recipe_overrides = {}
    for item in overrides:
        key, value = item
        if getattr(item, "op", "set") != "set":
            raise ConfigError(f"{key}: only --section.key VALUE overrides are taken here")
        if key.startswith("tuning."):
            raw.set_by_path(key, value)
            raw.sources[key] = f"--{key}"
        else:
            recipe_overrides[key] = value
    tuning = ConfigNode({"tuning": raw["tuning"]})
    tuning.sources.update({k: v for k, v in raw.sources.items() if k.startswith("tuning")})
    tuning.resolve()
    rest = {k: v for k, v in raw.items() if k != "tuning"}
    return parse_tune_config(tuning["tuning"], rest, raw.sources, recipe_overrides)


if __name__ == "__main__":
    sys.exit(tune_main(sys.argv[1:]))
