"""MLflow run from the recipe's ``mlflow:`` section (``experiment_name, run_name, tracking_uri, tags``).

Without ``tracking_uri`` MLflow's own default applies (``MLFLOW_TRACKING_URI``, else a local
``mlflow.db`` SQLite store in the working directory); ``file:`` and ``http(s):`` URIs work too.
Talks to the store through one ``MlflowClient`` so that no process-global active run is left behind.
"""

from __future__ import annotations

import time
from typing import Any

from nemo_like.components.loggers.optional import MissingExtraError, import_optional

_BATCH = 100  # MLflow's limit of params per log_batch call
_MAX_PARAM_LEN = 6000
_STATUS = {"success": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


class MLflowLogger:
    """One MLflow run: flat config as params, tags, and train/val metrics with their step."""

    def __init__(
        self,
        experiment_name: str = "nemo_like",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        mlflow = import_optional("mlflow", "mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        try:
            self.client = MlflowClient(self.tracking_uri)
            experiment = self.client.get_experiment_by_name(experiment_name)
        except ImportError as err:  # a SQL store needs sqlalchemy/alembic, not in mlflow-skinny
            raise MissingExtraError(
                f"mlflow.tracking_uri: {self.tracking_uri} needs the '{err.name}' package; pip install 'nemo_like[mlflow]'"
            ) from err
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(experiment_name, artifact_location=artifact_location)
        )
        run = self.client.create_run(
            experiment_id, run_name=run_name, tags={str(k): str(v) for k, v in (tags or {}).items()}
        )
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:_MAX_PARAM_LEN]) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def finish(self, status: str = "success") -> None:
        self.client.set_terminated(self.run_id, _STATUS.get(status, "FINISHED"))
