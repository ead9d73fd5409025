"""Twenty SIGKILLs at random moments, many inside saves, each followed by a resume, change nothing.

The parent imports torch and transformers once and forks each training process (a fork
inherits them, so a child starts in a fraction of a second). Each child trains a tiny
Llama with a checkpoint every 2 steps and resumes from ``LATEST``; the parent SIGKILLs it
at a seeded random moment and starts the next, 20 times, then lets the last one finish.
Saves pause briefly at each stage (``NEMO_LIKE_TEST_SAVE_PAUSE``) so that kills land inside
them too: mid-write, between the manifest and the rename, between the rename and ``LATEST``,
mid-prune. After every kill each step directory on disk must verify against its manifest
and ``LATEST`` must name one; at the end the per-step records and the final weights and
optimizer state equal those of one uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

import crash_hooks
from conftest import addition_rows, fork_logged, tiny_llama_config, write_jsonl
from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointingConfig
from nemo_like.components.checkpoint.manifest import verify_manifest
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
KILLS = 20
MAX_STEPS = 60
SEED = 20240611
SAVE_PAUSE_S = 0.02
COMPARED = ("loss", "grad_norm", "lr", "num_label_tokens", "epoch")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer) -> dict[str, str]:
    """A tiny Llama (hidden 32) and the addition data, as the recipe reads them from the environment."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("sigkill")
    config = tiny_llama_config(len(tiny_tokenizer))
    config.hidden_size, config.intermediate_size = 32, 64
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    return {
        "TEST_MODEL_DIR": str(root / "model"),
        "TEST_TRAIN_JSONL": write_jsonl(root / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(root / "validation.jsonl", addition_rows(6, offset=5)),
    }


def _train(env: dict[str, str], ckpt: Path, loop: bool = True) -> tuple[float, float]:
    """One training run: resume from LATEST when there is one, checkpoint every 2 steps, keep 3.

    Returns the seconds its set-up and its training loop took.
    """
    with mock.patch.dict(os.environ, {**env, "TEST_CKPT_DIR": str(ckpt)}):
        cfg = load_yaml_config(TINY)
    for key, value in {"checkpoint.checkpoint_dir": str(ckpt), "checkpoint.max_recent_checkpoints": 3,
                       "step_scheduler.max_steps": MAX_STEPS, "step_scheduler.ckpt_every_steps": 2,
                       "dataloader.shuffle": True}.items():
        cfg.set_by_path(key, value)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    start = time.perf_counter()
    recipe.setup()
    setup_s = time.perf_counter() - start
    if loop:
        recipe.run_train_validation_loop()
    return setup_s, time.perf_counter() - start - setup_s


def _start(env: dict[str, str], ckpt: Path, log: Path, pause: float) -> int:
    """Fork a training process; its output goes to ``log``. One thread, and ``os._exit``: no hang on exit."""
    return fork_logged(log, _paused_train, env, ckpt, pause)


def _paused_train(env: dict[str, str], ckpt: Path, pause: float) -> None:
    if pause:
        crash_hooks.install()
        os.environ["NEMO_LIKE_TEST_SAVE_PAUSE"] = str(pause)
    _train(env, ckpt)


def _wait(pid: int, log: Path, timeout_s: float = 120.0) -> None:
    """Wait for a training process to finish; it must succeed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
            return
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"training process hung; log:\n{log.read_text()[-3000:]}")


def _kill_at(pid: int, delay_s: float, log: Path) -> bool:
    """SIGKILL ``pid`` after ``delay_s``; False when it finished first (it must not have failed)."""
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
            return False
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != -signal.SIGKILL:  # it ended on its own just before the kill
        assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
        return False
    return True


def _caught_in_a_save(ckpt: Path) -> bool:
    """Debris of a save, or a sealed step directory newer than LATEST (killed before the pointer moved)."""
    if not ckpt.is_dir():
        return False
    if any(p.name.startswith(".tmp_") for p in ckpt.iterdir()):
        return True
    dirs = Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).step_dirs()
    latest = (ckpt / "LATEST").read_text() if (ckpt / "LATEST").exists() else None
    return bool(dirs) and dirs[-1] != latest


def _assert_every_checkpoint_loadable(ckpt: Path) -> None:
    checkpointer = Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt)))
    latest = checkpointer.latest()  # a LATEST holding garbage or naming a missing directory raises
    dirs = checkpointer.step_dirs()
    assert latest is None or os.path.basename(latest) in dirs
    for name in dirs:
        verify_manifest(str(ckpt / name))


def _records(ckpt: Path) -> dict[int, dict]:
    """The last record of each step (a run killed before its first checkpoint starts over and logs again)."""
    out: dict[int, dict] = {}
    for line in (ckpt / "training.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # torn by a kill before the first checkpoint existed
            continue
        out[record["step"]] = record
    return out


def _final_state(ckpt: Path) -> tuple[str, dict[str, torch.Tensor], dict]:
    name = (ckpt / "LATEST").read_text()
    weights = load_file(ckpt / name / "model" / "model.safetensors")
    optim = torch.load(ckpt / name / "optim" / "optimizer.pt", weights_only=True)
    return name, weights, optim


@pytest.mark.slow
def test_twenty_sigkills_with_resumes_give_the_uninterrupted_run_bit_for_bit(env, tmp_path):
    start = time.perf_counter()
    reference = tmp_path / "reference"
    # The uninterrupted run goes here, in this process: every module the children need is then imported.
    _, loop_s = _train(env, reference)
    setup_s, _ = _train(env, reference, loop=False)  # a warm set-up, as a forked child's
    # The time to a first checkpoint (set-up, two steps, a save) sets the scale of the kill moments.
    unit = setup_s + loop_s / (MAX_STEPS / 2)

    rng = random.Random(SEED)
    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    in_save, pointed_at = 0, set()
    for kill in range(KILLS):
        pid = _start(env, killed, log, SAVE_PAUSE_S)
        # From mid set-up to a few saves in: some kills land before any step, many inside a save.
        if not _kill_at(pid, unit * rng.uniform(0.5, 5.0), log):
            pytest.fail(f"the run finished after only {kill} kills; make it longer")
        in_save += _caught_in_a_save(killed)
        _assert_every_checkpoint_loadable(killed)
        if (killed / "LATEST").exists():
            pointed_at.add((killed / "LATEST").read_text())
    resumed_before = log.read_text().count("resumed from")
    _wait(_start(env, killed, log, SAVE_PAUSE_S), log)
    assert log.read_text().count("resumed from") == resumed_before + 1  # the last process resumed too
    _assert_every_checkpoint_loadable(killed)

    want, got = _records(reference), _records(killed)
    assert sorted(want) == sorted(got) == list(range(MAX_STEPS))
    for step in range(MAX_STEPS):
        for field in COMPARED:
            assert got[step][field] == want[step][field], (step, field, got[step][field], want[step][field])
    name, weights, optim = _final_state(killed)
    ref_name, ref_weights, ref_optim = _final_state(reference)
    assert name == ref_name == f"epoch_{(MAX_STEPS - 1) // 4}_step_{MAX_STEPS - 1}"
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert optim["state"].keys() == ref_optim["state"].keys()
    for index, state in optim["state"].items():
        for key, value in state.items():
            assert torch.equal(value, ref_optim["state"][index][key]), (index, key)
    assert in_save >= 3, f"only {in_save} of {KILLS} kills landed inside a save"
    assert len(pointed_at) >= 5, f"the run hardly moved between kills: LATEST named only {sorted(pointed_at)}"
    print(f"{KILLS} kills ({in_save} inside a save, LATEST moved through {len(pointed_at)} checkpoints) in "
          f"{time.perf_counter() - start:.1f} s; first checkpoint after {unit:.2f} s")
