"""Loss curves of one run and learning-rate sweeps over several, as PNG plus the plotted data."""

from nemo_like.components.plotting.loss_curves import load_run_curves, plot_run
from nemo_like.components.plotting.sweep import load_sweep, plot_sweep, sweep_table

__all__ = ["load_run_curves", "load_sweep", "plot_run", "plot_sweep", "sweep_table"]
