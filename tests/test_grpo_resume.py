"""A GRPO run SIGKILLed mid-training and resumed gives the uninterrupted run bit for bit: the sampled
completions too, since the generator draws from the RNG state the checkpoint holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import fork_logged, step_records, write_jsonl
from test_dpo_resume import _kill_after_checkpoint
from test_train_grpo import TINY, prompt_rows

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
LORA = {"_target_": "nemo_like.components._peft.lora.PeftConfig", "target_modules": ["q_proj", "v_proj"],
        "dim": 4, "alpha": 8}
TIMINGS = ("time_s", "mem_gib", "generation_s", "update_s", "generated_tokens_per_s")


def _train(env: dict[str, str], ckpt: Path) -> None:
    os.environ.update({**env, "TEST_CKPT_DIR": str(ckpt)})
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_grpo import TrainGRPORecipe

    cfg = load_yaml_config(TINY)
    settings = {"step_scheduler.max_steps": STEPS, "step_scheduler.ckpt_every_steps": 2, "checkpoint.enabled": True,
                "step_scheduler.val_every_steps": 4, "dataloader.shuffle": True, "peft": LORA, "grpo.beta": 0.05,
                "grpo.num_iterations": 2}
    for key, value in settings.items():
        cfg.set_by_path(key, value)
    recipe = TrainGRPORecipe(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()


def _fork(env: dict[str, str], ckpt: Path, log: Path) -> int:
    return fork_logged(log, _train, env, ckpt)


def _records(ckpt: Path) -> dict[int, dict]:
    return step_records(ckpt, TIMINGS)


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_model_dir):
    env = {"TEST_MODEL_DIR": tiny_model_dir,
           "TEST_TRAIN_PROMPTS": write_jsonl(tmp_path / "train.jsonl", prompt_rows(16)),
           "TEST_VAL_PROMPTS": write_jsonl(tmp_path / "val.jsonl", prompt_rows(4, offset=5))}
    saved = dict(os.environ)
    try:
        _train(env, tmp_path / "whole")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    latest = None
    for _ in range(2):  # killed twice, each after a newer checkpoint
        latest = _kill_after_checkpoint(_fork(env, killed, log), killed, log, latest)
    pid = _fork(env, killed, log)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
    assert log.read_text().count("resumed from") == 2

    want, got = _records(tmp_path / "whole"), _records(killed)
    assert sorted(want) == sorted(got) == list(range(STEPS))
    assert all(want[s] == got[s] for s in range(STEPS)), [(want[s], got[s]) for s in range(STEPS) if want[s] != got[s]]
    name = (killed / "LATEST").read_text()
    ours, theirs = (load_file(next((root / name / "model").rglob("*.safetensors"))) for root in (killed,
                                                                                                   tmp_path / "whole"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
