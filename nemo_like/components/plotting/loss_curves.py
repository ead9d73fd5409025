"""One run's train loss, validation loss and learning rate against step: ``loss_curves.png`` + ``.json``.

The data file is written first and always; the PNG needs matplotlib (``nemo_like[plot]``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from nemo_like.components.loggers.optional import MissingExtraError, import_optional
from nemo_like.components.plotting.run_files import check_run_dir, read_jsonl

PLOT_NAME = "loss_curves"


def load_run_curves(run_dir: str) -> dict[str, list[list[float]]]:
    """``{"train_loss": [[step, value], ...], "val_loss": [...], "lr": [...]}`` from the run's JSONL files.

    A step logged twice (a resumed run re-running steps) keeps its last record.
    """
    check_run_dir(run_dir)
    train = {int(r["step"]): r for r in read_jsonl(os.path.join(run_dir, "training.jsonl"))}
    val = {int(r["step"]): r for r in read_jsonl(os.path.join(run_dir, "validation.jsonl")) if "val_loss" in r}
    steps = sorted(train)
    return {
        "train_loss": [[s, float(train[s]["loss"])] for s in steps if "loss" in train[s]],
        "val_loss": [[s, float(val[s]["val_loss"])] for s in sorted(val)],
        "lr": [[s, float(train[s]["lr"])] for s in steps if "lr" in train[s]],
    }


def plot_run(
    run_dir: str, out_dir: str | None = None, title: str | None = None, require_png: bool = True
) -> dict[str, Any]:
    """Write ``loss_curves.json`` and ``loss_curves.png`` into ``out_dir`` (default: the run dir).

    Returns ``{"data": path, "png": path or None, "series": curves}``; without matplotlib the PNG
    is skipped when ``require_png`` is false, else that is a one-line error naming the extra.
    """
    curves = load_run_curves(run_dir)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    data_path = os.path.join(out_dir, PLOT_NAME + ".json")
    with open(data_path, "w", encoding="utf-8") as handle:
        json.dump({"run_dir": os.path.abspath(run_dir), **curves}, handle, indent=1)
    png: str | None = os.path.join(out_dir, PLOT_NAME + ".png")
    if matplotlib_available(require=require_png):
        _draw(curves, png, title or os.path.basename(os.path.abspath(run_dir)))
    else:
        png = None
    return {"data": data_path, "png": png, "series": curves}


def matplotlib_available(require: bool) -> bool:
    """True when matplotlib imports; without it, a one-line error naming the extra, or False."""
    try:
        import_optional("matplotlib", "plot", "plot")
    except MissingExtraError:
        if require:
            raise
        return False
    return True


def _draw(curves: dict[str, list[list[float]]], path: str, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 6), dpi=100)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if curves["train_loss"]:
        steps, values = zip(*curves["train_loss"])
        loss_ax.plot(steps, values, label="train loss", color="tab:blue", linewidth=1.2)
    if curves["val_loss"]:
        steps, values = zip(*curves["val_loss"])
        loss_ax.plot(steps, values, label="validation loss", color="tab:orange", marker="o", linewidth=1.5)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(title)
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    if curves["lr"]:
        steps, values = zip(*curves["lr"])
        lr_ax.plot(steps, values, label="learning rate", color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
