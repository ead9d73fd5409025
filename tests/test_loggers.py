"""Experiment trackers from YAML sections: W&B (offline), MLflow, TensorBoard and JSONL agree step by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from nemo_like.recipes.builders.trackers import build_metric_loggers
from nemo_like.components.loggers.optional import MissingExtraError
from nemo_like.config.errors import ConfigError
from nemo_like.components.loggers.params import flatten_params
from nemo_like.config.loader import ConfigNode
from nemo_like.config.secrets import REDACTED, redact_config

TINY = str(REPO / "tests" / "configs" / "tiny_sft.yaml")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def five_step_run(tmp_path, tiny_model_dir, addition_data) -> dict:
    """A 5-step tiny run through `nemo-like finetune` with every tracker turned on from the command line."""
    ckpt, wandb_dir, tb_dir = tmp_path / "ckpt", tmp_path / "wandb_logs", tmp_path / "tb"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", TEST_MODEL_DIR=tiny_model_dir,
               TEST_TRAIN_JSONL=addition_data["train"], TEST_VAL_JSONL=addition_data["validation"],
               TEST_CKPT_DIR=str(ckpt))
    cmd = [sys.executable, "-m", "nemo_like.cli", "finetune", "-c", TINY, "--step_scheduler.max_steps", "5",
           "--wandb.project", "finetune-lr-sweep", "--wandb.name", "lr_1e-3_tiny", "--wandb.save_dir", str(wandb_dir),
           "--mlflow.experiment_name", "finetune-lr-sweep", "--mlflow.run_name", "lr_1e-3_tiny",
           "--mlflow.tracking_uri", uri, "--mlflow.tags.task", "finetune",
           "--tensorboard.log_dir", str(tb_dir)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"ckpt": ckpt, "wandb_dir": wandb_dir, "tb_dir": tb_dir, "uri": uri,
            "train": _jsonl(ckpt / "training.jsonl"), "val": _jsonl(ckpt / "validation.jsonl")}


@pytest.mark.slow
def test_all_trackers_record_the_same_step_losses_as_training_jsonl(five_step_run):
    run = five_step_run
    losses = {r["step"]: r["loss"] for r in run["train"]}
    val_losses = {r["step"]: r["val_loss"] for r in run["val"]}
    assert sorted(losses) == [0, 1, 2, 3, 4] and val_losses

    # W&B offline: a run directory under save_dir, read back through wandb's own transaction-log reader.
    (run_dir,) = (run["wandb_dir"] / "wandb").glob("offline-run-*")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    header = next(r["run"] for r in records if r["type"] == "run")
    assert header["project"] == "finetune-lr-sweep" and header["display_name"] == "lr_1e-3_tiny"
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert {h["_step"]: h["train/loss"] for h in history if "train/loss" in h} == pytest.approx(losses, rel=1e-12)
    assert {h["_step"]: h["val/loss"] for h in history if "val/loss" in h} == pytest.approx(val_losses, rel=1e-12)
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
        elif r["type"] == "run":
            config.update(r["run"].get("config", {}).get("update", {}))
    assert config["optimizer.lr"] == 0.001 and config["step_scheduler.max_steps"] == 5

    # MLflow: params, tags and metric histories through MlflowClient.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["uri"])
    experiment = client.get_experiment_by_name("finetune-lr-sweep")
    (ml_run,) = client.search_runs([experiment.experiment_id])
    assert ml_run.info.run_name == "lr_1e-3_tiny" and ml_run.info.status == "FINISHED"
    assert ml_run.data.params["optimizer.lr"] == "0.001" and ml_run.data.params["optimizer._target_"] == "torch.optim.AdamW"
    assert ml_run.data.tags["task"] == "finetune"
    history = client.get_metric_history(ml_run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses, rel=1e-12)
    history = client.get_metric_history(ml_run.info.run_id, "val/loss")
    assert {m.step: m.value for m in history} == pytest.approx(val_losses, rel=1e-12)

    # TensorBoard: real event files, read with tensorboard's event reader (scalars are float32).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run["tb_dir"]))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses, rel=1e-6)
    assert {e.step: e.value for e in events.Scalars("val/loss")} == pytest.approx(val_losses, rel=1e-6)
    assert {e.step: e.value for e in events.Scalars("train/lr")} == pytest.approx({s: 1e-3 for s in losses}, rel=1e-6)
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb looks like to import
    with pytest.raises(MissingExtraError) as err:
        build_metric_loggers(ConfigNode({"wandb": {"project": "p"}}), str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and message.startswith("wandb:") and "pip install 'nemo_like[wandb]'" in message


def test_trackers_are_off_unless_asked_and_on_rank_zero_only(tmp_path):
    config = ConfigNode({"tensorboard": {"log_dir": str(tmp_path / "tb")}, "wandb": None, "mlflow": {"enabled": False}})
    assert not build_metric_loggers(config, str(tmp_path), enabled=False)
    assert not (tmp_path / "tb").exists()
    built = build_metric_loggers(config, str(tmp_path))
    assert list(built.loggers) == ["tensorboard"]
    built.finish()
    # NeMo AutoModel's switch is `enable`; its folder key `dir` is W&B's own name for save_dir.
    nam = ConfigNode({"wandb": {"enable": False, "project": "p", "dir": str(tmp_path / "wb")}})
    assert not build_metric_loggers(nam, str(tmp_path))
    clash = ConfigNode({"wandb": {"mode": "offline", "dir": "a", "save_dir": "b"}})
    with pytest.raises(ConfigError, match="wandb.dir"):
        build_metric_loggers(clash, str(tmp_path))


def test_params_are_the_flattened_config_without_secrets():
    flat = flatten_params(redact_config({"optimizer": {"lr": 1e-5, "betas": [0.9, 0.95]},
                                         "hub": {"hf_token": "abc", "pad_token": "x"}}))
    assert flat == {"optimizer.lr": 1e-5, "optimizer.betas.0": 0.9, "optimizer.betas.1": 0.95,
                    "hub.hf_token": REDACTED, "hub.pad_token": "x"}
