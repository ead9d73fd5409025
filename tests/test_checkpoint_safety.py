"""Checkpoints never half-load and never hold bad state.

A damaged step directory (truncated weights or optimizer, a flipped byte, a missing or an
added file, no manifest) and a broken ``LATEST`` (garbage, or naming a missing directory)
are each refused in one line naming the file, before anything loads: through the
Checkpointer API and through the recipe's command line. Weights holding NaN/inf are never
saved. A disk without room refuses the save up front, and a disk that fills mid-save leaves
no partial directory behind; both say where and how many bytes the save needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch

from conftest import addition_rows, write_jsonl
from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointError, CheckpointingConfig
from nemo_like.components.checkpoint.disk_space import DiskFullError, checkpoint_bytes, free_bytes
from nemo_like.components.checkpoint.finite_weights import NonFiniteWeightsError
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.recipes.llm.run import main

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
RUN = ["--config", TINY, "--step_scheduler.max_steps", "2", "--step_scheduler.ckpt_every_steps", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    data = tmp_path_factory.mktemp("safety_data")
    return {
        "TEST_MODEL_DIR": tiny_model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(data / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(data / "validation.jsonl", addition_rows(6, offset=5)),
    }


def _main(env: dict[str, str], ckpt: Path, args: list[str]) -> int:
    with mock.patch.dict(os.environ, {**env, "TEST_CKPT_DIR": str(ckpt)}):
        return main(args)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory) -> Path:
    """A 2-step run with a checkpoint after each step: epoch_0_step_0 and epoch_0_step_1 (LATEST)."""
    ckpt = tmp_path_factory.mktemp("trained") / "ckpt"
    assert _main(env, ckpt, RUN) == 0
    assert (ckpt / "LATEST").read_text() == "epoch_0_step_1"
    return ckpt


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


STEP = "epoch_0_step_1"
DAMAGE = {
    "truncated-safetensors": (lambda c: _truncate(c / STEP / "model" / "model.safetensors"),
                              f"{STEP}/model/model.safetensors has", "(truncated)"),
    "truncated-optimizer": (lambda c: _truncate(c / STEP / "optim" / "optimizer.pt"),
                            f"{STEP}/optim/optimizer.pt has", "(truncated)"),
    "flipped-byte": (lambda c: _flip_byte(c / STEP / "model" / "consolidated" / "model.safetensors"),
                     f"{STEP}/model/consolidated/model.safetensors does not match its xxh3_128 checksum", "changed after"),
    "missing-file": (lambda c: (c / STEP / "rng" / "rng.pt").unlink(), f"{STEP}/rng/rng.pt is missing", "listed in"),
    "extra-file": (lambda c: (c / STEP / "model" / "model.pt").write_bytes(b"x"),
                   f"{STEP}/model/model.pt is not listed in MANIFEST.json", "added after"),
    "no-manifest": (lambda c: (c / STEP / "MANIFEST.json").unlink(), f"{STEP}/MANIFEST.json is missing",
                    "not known to be complete"),
    "garbage-latest": (lambda c: (c / "LATEST").write_bytes(b"\x00\xffnot a step\n"), "LATEST holds",
                       "not a step directory name"),
    "latest-names-missing-dir": (lambda c: (c / "LATEST").write_text("epoch_3_step_40"),
                                 "LATEST names epoch_3_step_40, which does not exist", "complete step directory"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(trained, env, tmp_path, capsys, case):
    damage, names_file, why = DAMAGE[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    damage(ckpt)
    before = (ckpt / "training.jsonl").read_text()

    with pytest.raises(CheckpointError) as err:
        Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).resume_path()
    message = str(err.value)
    assert "\n" not in message and message.startswith("checkpoint.restore_from: ")
    assert names_file in message and why in message, message

    capsys.readouterr()
    assert _main(env, ckpt, RUN[:2] + ["--step_scheduler.max_steps", "4"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1] == f"error: {message}"
    assert not any("Traceback" in line or "resumed from" in line for line in err_lines)
    assert (ckpt / "training.jsonl").read_text() == before  # nothing ran, nothing was dropped


@pytest.mark.parametrize("case", ["truncated-safetensors", "flipped-byte", "no-manifest"])
def test_load_refuses_before_touching_the_model_or_optimizer(trained, tiny_model_dir, tmp_path, case):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    DAMAGE[case][0](ckpt)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=DAMAGE[case][1]):
        Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).load(str(ckpt / STEP), {"model": model, "optim": optimizer})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not optimizer.state


def test_the_earlier_checkpoint_the_error_names_resumes(trained, env, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    _truncate(ckpt / STEP / "model" / "model.safetensors")
    with pytest.raises(CheckpointError, match="--checkpoint.restore_from epoch_0_step_0"):
        Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).resume_path()
    capsys.readouterr()
    assert _main(env, ckpt, RUN + ["--checkpoint.restore_from", "epoch_0_step_0"]) == 0
    assert f"resumed from {ckpt / 'epoch_0_step_0'}" in capsys.readouterr().err
    assert (ckpt / "LATEST").read_text() == STEP
    Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).verify(str(ckpt / STEP))  # re-saved whole


def test_a_step_moved_aside_by_an_interrupted_resave_is_put_back(trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    (ckpt / STEP).rename(ckpt / f".tmp_replaced_{STEP}")  # the instant between the two renames of a re-save
    assert Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).resume_path() == str(ckpt / STEP)


# ---------------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_weights_holding_nan_or_inf_are_never_saved(tiny_model_dir, tiny_tokenizer, tmp_path, method, bad):
    from transformers import AutoModelForCausalLM

    from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftConfig(match_all_linear=True, dim=4) if method == "lora" else None
    if peft is not None:
        apply_lora_to_linear_modules(model, peft)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trainable])
    ckpt = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path)))
    good = ckpt.save(0, 0, {"model": ModelState(model, tiny_tokenizer, adapter=peft), "optim": optimizer})

    first, later = trainable[len(trainable) // 2], trainable[-1]
    with torch.no_grad():
        first[1].view(-1)[3] = bad
        later[1].view(-1)[0] = bad
    with pytest.raises(NonFiniteWeightsError) as err:
        ckpt.save(0, 1, {"model": ModelState(model, tiny_tokenizer, adapter=peft), "optim": optimizer})
    message = str(err.value)
    assert "\n" not in message and "step 1" in message and f" {first[0]} holds NaN or inf" in message, message
    assert "LATEST still names epoch_0_step_0" in message
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "epoch_0_step_0"]  # no new directory, no debris
    assert (tmp_path / "LATEST").read_text() == "epoch_0_step_0"
    ckpt.verify(good)


# ---------------------------------------------------------------------- a full disk
@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips without root or mount); always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(proc.stderr or proc.stdout).strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_save_bigger_than_the_disk_is_refused_before_writing(env, tmp_path, capsys):
    """~1.4 MB a checkpoint on a 2 MiB disk: step 0 fits, step 1 is refused up front by the recipe."""
    with _small_tmpfs(tmp_path / "disk", "2M") as disk:
        ckpt = disk / "ckpt"
        assert _main(env, ckpt, RUN) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: checkpoint of step 1: not enough space in ") and str(ckpt) in last, last
        assert "needs more than " in last and " bytes" in last and "LATEST still names epoch_0_step_0" in last
        assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["epoch_0_step_0"]
        assert (ckpt / "LATEST").read_text() == "epoch_0_step_0"
        Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).verify(str(ckpt / "epoch_0_step_0"))


def test_a_disk_that_fills_mid_save_leaves_no_partial_directory(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The estimate fits, the real files (headers, tokenizer, pages) do not: ENOSPC mid-save."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    optimizer.step()
    with _small_tmpfs(tmp_path / "disk", "4M") as disk:
        ckpt = Checkpointer(CheckpointingConfig(checkpoint_dir=str(disk / "ckpt")))
        good = ckpt.save(0, 0, {"model": ModelState(model, tiny_tokenizer), "optim": optimizer})
        needed = checkpoint_bytes(model, optimizer, shares_weights=True)  # the weights are one file, two names
        filler = (free_bytes(ckpt.root) - needed) // 4096 * 4096  # leaves just the estimate free
        (disk / "filler").write_bytes(b"\0" * filler)
        free = free_bytes(ckpt.root)
        assert needed <= free < needed + 4096 * 2

        with pytest.raises(DiskFullError) as err:
            ckpt.save(0, 1, {"model": ModelState(model, tiny_tokenizer), "optim": optimizer})
        message = str(err.value)
        assert "\n" not in message and message.startswith("checkpoint of step 1: no space left on device while "
                                                          f"writing {disk / 'ckpt' / '.tmp_epoch_0_step_1'}")
        assert f"the save to {disk / 'ckpt' / '.tmp_epoch_0_step_1'} needs more than {needed} bytes" in message, message
        assert sorted(os.listdir(ckpt.root)) == ["LATEST", "epoch_0_step_0"]  # the partial directory is gone
        assert free_bytes(ckpt.root) == free  # and its space is back
        assert (disk / "ckpt" / "LATEST").read_text() == "epoch_0_step_0"
        ckpt.verify(good)


# ---------------------------------------------------------------------- several ranks
def _two_rank_run(env: dict[str, str], ckpt: str) -> dict:
    """One FSDP2 rank: train 2 steps (a sharded checkpoint at step 1), then try to save NaN weights that only
    rank 1's shard holds. Runs in a fork."""
    os.environ.update(env, TEST_CKPT_DIR=ckpt)
    import torch.distributed as dist

    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(str(Path(__file__).parent / "configs" / "tiny_sft_dist.yaml"))
    cfg.set_by_path("step_scheduler.max_steps", 2)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()
    poisoned = "model.layers.1.mlp.down_proj.weight"
    if dist.get_rank() == 1:
        with torch.no_grad():
            dict(recipe.model.named_parameters())[poisoned].to_local().view(-1)[0] = float("nan")
    try:
        recipe.checkpointer.save(0, 2, {"model": recipe.model, "optim": recipe.optimizer, "rng": recipe.rng})
    except NonFiniteWeightsError as err:
        return {"refused": str(err), "poisoned": poisoned}
    return {"refused": None, "poisoned": poisoned}


@pytest.mark.slow
def test_sharded_checkpoints_are_sealed_and_every_rank_refuses_nan_together(env, tmp_path):
    from nemo_like.components.distributed.fork_launcher import run_on_ranks

    ckpt = tmp_path / "ckpt"
    results = run_on_ranks(_two_rank_run, 2, env, str(ckpt))  # a rank left waiting in a collective would hang here
    for result in results:  # both ranks refuse, naming the tensor that only rank 1's shard spoilt
        assert result["refused"] is not None and f" {result['poisoned']} holds NaN or inf" in result["refused"]
        assert result["refused"].startswith("checkpoint of step 2 refused: ")
    assert "LATEST still names epoch_0_step_1" in results[0]["refused"]  # rank 0 owns the pointers
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["epoch_0_step_1"]
    assert (ckpt / "LATEST").read_text() == "epoch_0_step_1"
    step = ckpt / "epoch_0_step_1"
    assert (step / "model" / ".metadata").is_file() and (step / "MANIFEST.json").is_file()
    checkpointer = Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt)))
    assert checkpointer.resume_path() == str(step)  # the sharded checkpoint verifies

    shard = next(p for p in sorted((step / "optim").iterdir()) if p.suffix == ".distcp")
    _truncate(shard)
    with pytest.raises(CheckpointError, match=f"{shard} has .* bytes, MANIFEST.json says .* \\(truncated\\)"):
        Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt))).resume_path()


def test_a_part_a_method_adds_is_saved_sealed_and_restored(tmp_path):
    """A method's own stateful part (a DPO reference, a value head) goes in the dict and comes back exactly."""
    import json

    torch.manual_seed(0)
    model, reference = torch.nn.Linear(4, 2), torch.nn.Linear(3, 3)
    ckpt = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path), save_consolidated=False))
    path = ckpt.save(0, 0, {"model": model, "reference": reference, "optim": torch.optim.SGD(model.parameters())})
    assert "reference.pt" in json.loads((Path(path) / "MANIFEST.json").read_text())["files"]  # sealed like the rest

    fresh_model, fresh_reference = torch.nn.Linear(4, 2), torch.nn.Linear(3, 3)
    assert not torch.equal(fresh_reference.weight, reference.weight)
    ckpt.load(path, {"model": fresh_model, "reference": fresh_reference})
    assert torch.equal(fresh_reference.weight, reference.weight) and torch.equal(fresh_model.weight, model.weight)
    with pytest.raises(CheckpointError, match=r"is incomplete \(no value_head.pt\)"):
        ckpt.load(path, {"model": fresh_model, "value_head": torch.nn.Linear(3, 1)})
