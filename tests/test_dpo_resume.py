"""A DPO run SIGKILLed mid-training and resumed gives the uninterrupted run bit for bit, the precomputed
reference included (read back from the checkpoint, not recomputed with a policy that has moved)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import fork_logged, write_jsonl
from test_train_dpo import LORA, TINY, pair_rows

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 12


def _train(env: dict[str, str], ckpt: Path, overrides: dict) -> None:
    os.environ.update({**env, "TEST_CKPT_DIR": str(ckpt)})
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_dpo import TrainDPORecipe

    cfg = load_yaml_config(TINY)
    settings = {"step_scheduler.max_steps": STEPS, "step_scheduler.ckpt_every_steps": 2,
                "step_scheduler.val_every_steps": 4, "dataloader.shuffle": True, **overrides}
    for key, value in settings.items():
        cfg.set_by_path(key, value)
    recipe = TrainDPORecipe(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()


def _fork(env: dict[str, str], ckpt: Path, log: Path, overrides: dict) -> int:
    return fork_logged(log, _train, env, ckpt, overrides)


def _kill_after_checkpoint(pid: int, ckpt: Path, log: Path, newer_than: str | None) -> str:
    """SIGKILL the run once LATEST names a checkpoint newer than ``newer_than``; returns that name."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        latest = (ckpt / "LATEST").read_text() if (ckpt / "LATEST").exists() else None
        if latest is not None and latest != newer_than:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return latest
        done, status = os.waitpid(pid, os.WNOHANG)
        assert not done, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"no checkpoint within 120 s: {log.read_text()[-2000:]}")


def _records(ckpt: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (ckpt / "training.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("time_s"), record.pop("pairs_per_s"), record.pop("mem_gib")
        out[record["step"]] = record
    return out


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{"peft": LORA}, {"reference.mode": "precomputed"}],
                         ids=["lora-adapter-off", "full-precomputed"])
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_model_dir, overrides):
    env = {"TEST_MODEL_DIR": tiny_model_dir,
           "TEST_TRAIN_PAIRS": write_jsonl(tmp_path / "train.jsonl", pair_rows(16)),
           "TEST_VAL_PAIRS": write_jsonl(tmp_path / "val.jsonl", pair_rows(6, offset=5))}
    saved = dict(os.environ)
    try:
        _train(env, tmp_path / "whole", overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    latest = None
    for _ in range(3):  # killed three times, each after a newer checkpoint
        latest = _kill_after_checkpoint(_fork(env, killed, log, overrides), killed, log, latest)
    pid = _fork(env, killed, log, overrides)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("resumed from") == 3
    if overrides.get("reference.mode") == "precomputed":
        assert text.count("precomputed in") == 2  # training and validation pairs, by the first process only

    want, got = _records(tmp_path / "whole"), _records(killed)
    assert sorted(want) == sorted(got) == list(range(STEPS))
    assert all(want[s] == got[s] for s in range(STEPS)), [(want[s], got[s]) for s in range(STEPS) if want[s] != got[s]]
    name = (killed / "LATEST").read_text()
    assert name == (tmp_path / "whole" / "LATEST").read_text()
    ours, theirs = (load_file(next((root / name / "model").rglob("*.safetensors"))) for root in (killed,
                                                                                                   tmp_path / "whole"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
