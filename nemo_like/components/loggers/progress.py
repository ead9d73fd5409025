"""The console side of a run: one line per step and a progress bar when a person is watching."""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

from nemo_like.components.loggers.phase_progress import format_duration, time_left

logger = logging.getLogger("nemo_like")


def peak_memory_gib() -> float:
    """Peak memory of this process: the accelerator's allocator when present, else the max resident set."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# The step line's fields in order, with their formats; a method's step reports what it has (loss at least).
_STEP_FIELDS = (("step", "step {}"), ("epoch", "epoch {}"), ("loss", "loss {:.4f}"), ("grad_norm", "grad_norm {:.4f}"),
                ("rewards/accuracies", "reward_acc {:.3f}"), ("rewards/margins", "reward_margin {:.4f}"),
                ("reward", "reward {:.3f}"), ("kl", "kl {:.4f}"), ("completions/mean_length", "completion_len {:.1f}"),
                ("generation_s", "generate {:.1f} s"), ("update_s", "update {:.1f} s"),
                ("lr", "lr {:.2e}"), ("mem_gib", "mem {:.2f} GiB"), ("tps", "tps {:.0f}"),
                ("pairs_per_s", "pairs/s {:.1f}"), ("num_label_tokens", "num_label_tokens {}"))


def format_step_line(m: dict[str, Any], last_step: int | None = None, left_s: float | None = None) -> str:
    """``step N/M | epoch ... | ~T left``: M is the number of the last step (steps count from 0, as in
    checkpoint names), T the time the remaining steps take at this run's pace so far."""
    fields = [fmt.format(m[key]) for key, fmt in _STEP_FIELDS if key in m]
    if last_step is not None and "step" in m:
        fields[0] = f"step {m['step']}/{last_step}"
    if left_s is not None:
        fields.append(f"~{format_duration(left_s)} left")
    return " | ".join(fields)


class ProgressReporter:
    """Logs each step; draws a live bar (tqdm or rich) only when stdout and stderr are terminals.

    A log file or a pipe gets the step lines alone, each with ``step N/M`` and the time left. The bar
    shows loss, learning rate and tokens per second.
    """

    def __init__(
        self,
        total_steps: int,
        initial: int = 0,
        enabled: bool = True,
        disable_progress_bar: bool = False,
        backend: str = "tqdm",
    ) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.initial = initial
        self.start = time.monotonic()  # the pace is measured over the steps this process runs
        self.bar = None
        self.rich = None
        if not (enabled and not disable_progress_bar and sys.stdout.isatty() and sys.stderr.isatty()):
            return
        if backend == "rich":
            from nemo_like.components.loggers.optional import import_optional

            progress = import_optional("rich.progress", "rich", "ProgressBar.backend")
            self.rich = progress.Progress(
                progress.TextColumn("[bold]step"), progress.MofNCompleteColumn(), progress.BarColumn(),
                progress.TextColumn("{task.fields[stats]}"), progress.TimeRemainingColumn(), transient=False,
            )
            self.rich_task = self.rich.add_task("train", total=total_steps, completed=initial, stats="")
            self.rich.start()
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # Any method's metrics: the loss always, the rate and throughput when the step reports them.
        stats = {"loss": f"{metrics['loss']:.4f}"}
        if "lr" in metrics:
            stats["lr"] = f"{metrics['lr']:.1e}"
        if "tps" in metrics:
            stats["tok_s"] = f"{metrics['tps']:.0f}"
        line = self.step_line(metrics)
        if self.bar is not None:
            self.bar.set_postfix(stats)
            self.bar.update(1)
            self.bar.write(line)
        elif self.rich is not None:
            text = " | ".join(f"{k} {v}" for k, v in stats.items())
            self.rich.update(self.rich_task, advance=1, stats=text)
            self.rich.console.print(line, highlight=False)
        else:
            logger.info(line)

    def step_line(self, metrics: dict[str, Any]) -> str:
        """The step line with ``step N/M`` and the time the remaining steps take at the pace of this process."""
        if "step" not in metrics:
            return format_step_line(metrics)
        done_here = metrics["step"] + 1 - self.initial
        left = time_left(time.monotonic() - self.start, done_here, self.total_steps - self.initial)
        return format_step_line(metrics, last_step=self.total_steps - 1, left_s=left)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        elif self.rich is not None:
            self.rich.console.print(line, highlight=False)
        else:
            logger.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.rich is not None:
            self.rich.stop()
