"""Report each validation to the Optuna study a trial belongs to, and stop the run when the pruner says so.

A trial runs in its own process, so the study is reached through its storage (the SQLite file
the tuner made). A pruned run stops like an early-stopped one (a checkpoint of that step, exit 0)
and leaves ``PRUNED.json`` in its run directory, which tells the tuner to record it as pruned.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

MARKER = "PRUNED.json"


class OptunaPruning(Callback):
    """``metric`` (a validation key, default ``val_loss``) goes to trial ``trial_number`` of ``study_name``
    in ``storage`` at every validation; ``pruner`` (an ``optuna.pruners`` object) judges it."""

    def __init__(self, storage: str, study_name: str, trial_number: int, metric: str = "val_loss",
                 pruner: Any = None) -> None:
        import optuna

        self.metric = metric
        self.pruner = pruner if pruner is not None else optuna.pruners.MedianPruner()
        try:
            study = optuna.load_study(study_name=study_name, storage=storage, pruner=self.pruner)
        except KeyError as err:
            raise ConfigError(f"OptunaPruning.study_name: no study {study_name!r} in {storage}") from err
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(trial_number))
        self.trial = optuna.trial.Trial(study, trial_id)
        self.trial_number = int(trial_number)

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.metric not in record:
            raise ConfigError(f"OptunaPruning.metric: {self.metric!r} is not a validation metric "
                              f"(have: {', '.join(sorted(set(record) - {'step', 'epoch'}))})")
        value, step = float(record[self.metric]), int(record["step"])
        if not state.is_main:
            return
        if math.isfinite(value):
            self.trial.report(value, step)
        if not math.isfinite(value) or self.trial.should_prune():
            reason = f"{self.metric} {value:.4g} at step {step}"
            with open(os.path.join(state.run_dir, MARKER), "w", encoding="utf-8") as out:
                json.dump({"step": step, "value": value, "reason": reason}, out)
            logger.warning("trial %d pruned: %s", self.trial_number, reason)
            state.request_stop(f"pruned by the tuner: {reason}")
