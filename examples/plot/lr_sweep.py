"""The tuning guide's learning-rate experiment: one recipe at several learning rates, then one table.

    python examples/plot/lr_sweep.py --config recipes/smollm2_135m/sft_quickstart.yaml \
        --lrs 1e-6,1e-5,5e-5 --out runs/lr_sweep --step_scheduler.max_steps 40

Each run goes to ``OUT/lr_<lr>``; other arguments are passed to every run as overrides. At the
end ``OUT/sweep.png``, ``sweep.json`` and ``sweep.md`` compare validation loss at the same steps,
and the table marks the best run and any run whose validation loss rises.
"""

import argparse
import os
import subprocess
import sys

from nemo_like.cli import plot_main


def main() -> int:
    parser = argparse.ArgumentParser(prog="lr_sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", "-c", required=True)
    parser.add_argument("--lrs", default="1e-6,1e-5,5e-5", help="comma-separated learning rates")
    parser.add_argument("--out", default="runs/lr_sweep")
    args, overrides = parser.parse_known_args()
    runs = []
    for lr in args.lrs.split(","):
        run_dir = os.path.join(args.out, f"lr_{lr}")
        cmd = [sys.executable, "-m", "nemo_like.cli", "finetune", "-c", args.config, "--optimizer.lr", lr,
               "--checkpoint.checkpoint_dir", run_dir, *overrides]
        print("running:", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            print(f"error: the run with lr={lr} failed", file=sys.stderr)
            return 1
        runs.append(run_dir)
    return plot_main([*runs, "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
