"""``loss_curves.png`` (and the plotted data) in the run directory when a run finishes, as a callback.

Not on the way out of a preempted run, whose grace period is short; and a plot never fails a
run that trained: a missing file or an unwritable directory is a warning.
"""

from __future__ import annotations

import logging
import os

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.components.plotting import plot_run

logger = logging.getLogger("nemo_like")


class LossPlot(Callback):
    """Draws the run's ``training.jsonl`` / ``validation.jsonl`` on rank 0 (the PNG needs the ``plot`` extra)."""

    def on_training_complete(self, state: TrainState) -> None:
        if not state.is_main or not os.path.isfile(os.path.join(state.run_dir, "training.jsonl")):
            return
        try:
            plot = plot_run(state.run_dir, require_png=False)
        except (ValueError, OSError) as err:
            logger.warning("loss curves: not drawn (%s)", err)
            return
        logger.info("loss curves: %s", plot["png"] or f"{plot['data']} (pip install 'nemo_like[plot]' for the PNG)")
