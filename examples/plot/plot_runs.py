"""Plot one run's loss curves, or compare runs (same as ``nemo-like plot``).

    python examples/plot/plot_runs.py checkpoints/quickstart
    python examples/plot/plot_runs.py runs/lr_1e-6 runs/lr_1e-5 runs/lr_5e-5 --out runs/sweep
"""

import sys

from nemo_like.cli import plot_main

if __name__ == "__main__":
    sys.exit(plot_main(sys.argv[1:], prog="plot_runs.py"))
