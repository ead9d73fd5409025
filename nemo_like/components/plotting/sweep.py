"""Several runs side by side: validation loss at the same steps, the best run, and runs that overfit.

This is the learning-rate experiment of the tuning guide (the same recipe at ``lr=1e-6 / 1e-5 /
5e-5``): one table, step by run, and one plot of all the curves. Runs are labelled by what differs
between their saved recipes (``LR=1e-5``), else by their directory names.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nemo_like.components.loggers.params import flatten_params
from nemo_like.components.plotting.loss_curves import load_run_curves, matplotlib_available
from nemo_like.components.plotting.run_files import run_config

SWEEP_NAME = "sweep"
# Keys that differ between runs of one sweep without being the thing swept.
_IGNORED_PREFIXES = ("checkpoint.", "wandb.", "mlflow.", "tensorboard.", "evaluation.")
_SHORT_NAMES = {"optimizer.lr": "LR"}


def short_number(value: Any) -> str:
    """``0.001`` -> ``1e-3``, ``2.5e-05`` -> ``2.5e-5``, ``0.5`` -> ``0.5``: labels as people write them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    decimal = f"{value:g}"
    if value == 0 or abs(value) >= 1:
        return decimal
    mantissa, exponent = f"{value:.3e}".split("e")
    scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return scientific if len(scientific) <= len(decimal) else decimal


def run_labels(run_dirs: list[str]) -> list[str]:
    """``LR=1e-5`` style labels from the recipe keys whose values differ; directory names otherwise."""
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    configs = [flatten_params(run_config(d)) for d in run_dirs]
    if len(run_dirs) > 1 and all(configs):
        keys = sorted({k for c in configs for k in c})
        differing = [
            k for k in keys
            if not k.startswith(_IGNORED_PREFIXES) and len({json.dumps(c.get(k), default=str) for c in configs}) > 1
        ]
        if differing:
            labels = [
                ", ".join(f"{_SHORT_NAMES.get(k, k.split('.')[-1])}={short_number(c.get(k))}" for k in differing[:3])
                for c in configs
            ]
            if len(set(labels)) == len(labels):
                return labels
    if len(set(names)) < len(names):
        names = [os.path.relpath(d) for d in run_dirs]
    return names


def load_sweep(run_dirs: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    """Every run's curves, the union of validation steps, the best run and the runs whose val loss rises.

    ``best`` is the run with the lowest validation loss at the last step that every run
    validated at (the guide's "best final validation loss"); ``rising`` maps a run to the
    steps where its validation loss went up from the validation before.
    """
    if not run_dirs:
        raise ValueError("plot: give at least one run directory")
    labels = list(labels) if labels else run_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"plot: {len(labels)} labels for {len(run_dirs)} runs")
    runs = []
    for label, run_dir in zip(labels, run_dirs):
        curves = load_run_curves(run_dir)
        runs.append({"label": label, "run_dir": os.path.abspath(run_dir), **curves})
    steps = sorted({int(s) for run in runs for s, _ in run["val_loss"]})
    rising: dict[str, list[int]] = {}
    for run in runs:
        ups = [int(s) for (_, prev), (s, value) in zip(run["val_loss"], run["val_loss"][1:]) if value > prev]
        if ups:
            rising[run["label"]] = ups
    common = [s for s in steps if all(any(int(t) == s for t, _ in run["val_loss"]) for run in runs)]
    best = None
    if common:
        last = common[-1]
        best = min(runs, key=lambda r: next(v for t, v in r["val_loss"] if int(t) == last))["label"]
    return {"labels": labels, "steps": steps, "runs": runs, "best": best,
            "best_at_step": common[-1] if common else None, "rising": rising}


def sweep_table(sweep: dict[str, Any]) -> str:
    """Markdown table, step by run, of validation loss; the lowest of a row is starred, rises are marked."""
    header = ["Step"] + [f"{label} Val Loss" + (" (best)" if label == sweep["best"] else "") for label in sweep["labels"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    by_run = [{int(s): v for s, v in run["val_loss"]} for run in sweep["runs"]]
    for step in sweep["steps"]:
        present = [values[step] for values in by_run if step in values]
        lowest = min(present) if len(present) > 1 else None
        cells = [str(step)]
        for run, values in zip(sweep["runs"], by_run):
            if step not in values:
                cells.append("-")
                continue
            cell = f"{values[step]:.4f}"
            if values[step] == lowest:
                cell += " *"
            if step in sweep["rising"].get(run["label"], []):
                cell += " (rising!)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if sweep["best"] is not None:
        notes.append(f"best: {sweep['best']} (lowest validation loss at step {sweep['best_at_step']})")
    for label, ups in sweep["rising"].items():
        notes.append(f"rising: {label} (validation loss went up at step {', '.join(map(str, ups))})")
    return "\n".join(lines + ([""] + notes if notes else []))


def plot_sweep(
    run_dirs: list[str], out_dir: str, labels: list[str] | None = None, require_png: bool = True
) -> dict[str, Any]:
    """Write ``sweep.json``, ``sweep.md`` (the table) and ``sweep.png`` into ``out_dir``."""
    sweep = load_sweep(run_dirs, labels)
    os.makedirs(out_dir, exist_ok=True)
    table = sweep_table(sweep)
    data_path = os.path.join(out_dir, SWEEP_NAME + ".json")
    with open(data_path, "w", encoding="utf-8") as handle:
        json.dump(sweep, handle, indent=1)
    with open(os.path.join(out_dir, SWEEP_NAME + ".md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    png: str | None = os.path.join(out_dir, SWEEP_NAME + ".png")
    if matplotlib_available(require=require_png):
        _draw(sweep, png)
    else:
        png = None
    return {"data": data_path, "png": png, "table": table, "sweep": sweep}


def _draw(sweep: dict[str, Any], path: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 5.5), dpi=100)
    ax = fig.subplots()
    for index, run in enumerate(sweep["runs"]):
        color = f"C{index % 10}"
        if run["train_loss"]:
            steps, values = zip(*run["train_loss"])
            ax.plot(steps, values, color=color, alpha=0.35, linewidth=1, label=f"{run['label']} train")
        if run["val_loss"]:
            steps, values = zip(*run["val_loss"])
            best = " (best)" if run["label"] == sweep["best"] else ""
            ax.plot(steps, values, color=color, marker="o", linewidth=2, label=f"{run['label']} validation{best}")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title("validation loss by run (train loss faint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
