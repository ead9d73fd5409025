"""TensorBoard event files from the recipe's ``tensorboard:`` section (``log_dir``)."""

from __future__ import annotations

from typing import Any

from nemo_like.components.loggers.optional import MissingExtraError


class TensorBoardLogger:
    """Scalars per step, the flat config as hyperparameters and as a text table, in one event file."""

    def __init__(self, log_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's wrapper raises this when the tensorboard package is absent
            raise MissingExtraError(
                "tensorboard: needs the 'tensorboard' package, which is not installed; "
                "pip install 'nemo_like[tensorboard]'"
            ) from err
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=log_dir)

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The HPARAMS tab takes numbers, strings and booleans only.
        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        for summary in hparams(clean, {}):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in params.items())])
        self.writer.add_text("config", table, 0)
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, status: str = "success") -> None:
        self.writer.close()
