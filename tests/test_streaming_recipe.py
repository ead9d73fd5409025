"""The recipe with a streamed dataset: max_steps required, one pass per epoch, exact resume after a real SIGKILL.

The run: 16 rows streamed, micro-batch 2, global batch 4, so a pass is 4 steps; 10 steps
cross two epoch ends (steps 3 and 7). Without shuffling, the stream reads the rows in the
order the map-style dataset serves them, so the two loss curves must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch

import crash_hooks
from conftest import REPO, addition_rows, write_jsonl
from nemo_like.recipes.llm.run import main

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
STREAM = "nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset." \
         "ColumnMappedTextInstructionIterableDataset"
RUN = ["--config", TINY, "--dataset._target_", STREAM, "--step_scheduler.max_steps", "10",
       "--step_scheduler.ckpt_every_steps", "3"]
COMPARED = ("loss", "grad_norm", "lr", "num_label_tokens", "epoch")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    data = tmp_path_factory.mktemp("stream_data")
    return {
        "TEST_MODEL_DIR": tiny_model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(data / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(data / "validation.jsonl", addition_rows(6, offset=5)),
        "OMP_NUM_THREADS": "1",
    }


def _main(paths: dict[str, str], ckpt: Path, args: list[str]) -> int:
    with mock.patch.dict(os.environ, {**paths, "TEST_CKPT_DIR": str(ckpt)}):
        return main(args)


def _records(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]


def _same(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for field in COMPARED:
            assert a[field] == b[field], (a["step"], field, a[field], b[field])


@pytest.fixture(scope="module")
def reference(paths, tmp_path_factory) -> dict:
    """The uninterrupted streamed run, and the same run on the map-style dataset."""
    tmp = tmp_path_factory.mktemp("stream_reference")
    assert _main(paths, tmp / "stream", RUN) == 0
    assert _main(paths, tmp / "map", RUN[:2] + RUN[4:]) == 0
    return {"dir": tmp / "stream", "stream": _records(tmp / "stream"), "map": _records(tmp / "map")}


def test_a_stream_needs_max_steps_one_line_error_and_nothing_written(paths, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert _main(paths, ckpt, ["--config", TINY, "--dataset._target_", STREAM,
                               "--step_scheduler.max_steps", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: step_scheduler.max_steps: required when the dataset is streamed")
    assert "Traceback" not in "\n".join(err) and not ckpt.exists()


def test_one_pass_is_one_epoch_and_the_curve_equals_the_map_style_run(reference):
    stream = reference["stream"]
    assert [r["epoch"] for r in stream] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    _same(stream, reference["map"])
    saved = sorted(p.name for p in reference["dir"].iterdir() if p.name.startswith("epoch_"))
    assert saved == ["epoch_0_step_2", "epoch_0_step_3", "epoch_1_step_5", "epoch_1_step_7", "epoch_2_step_8",
                     "epoch_2_step_9"]  # every 3 steps, every epoch end, and the last step


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_gives_the_same_next_batches(paths, reference, tmp_path, capsys, workers):
    args = RUN + ["--dataloader.num_workers", str(workers)]
    want = reference["stream"]
    if workers:  # rows are dealt to the workers, which batch them apart: an uninterrupted run of its own
        assert _main(paths, tmp_path / "want", args) == 0
        want = _records(tmp_path / "want")
        assert [r["epoch"] for r in want] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    ckpt = tmp_path / "killed"
    env = {**os.environ, **paths, "TEST_CKPT_DIR": str(ckpt), "NEMO_LIKE_TEST_KILL_AFTER_STEP": "5"}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.run(crash_hooks.command("examples/llm_finetune/finetune.py", *args), cwd=REPO, env=env,
                          stdout=log, stderr=log, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert (ckpt / "LATEST").read_text() == "epoch_1_step_5"
    assert _main(paths, ckpt, args) == 0
    assert f"resumed from {ckpt / 'epoch_1_step_5'}" in capsys.readouterr().err
    _same(_records(ckpt), want)


def test_resume_from_an_epoch_end_starts_the_next_pass(paths, reference, tmp_path):
    ckpt = tmp_path / "from_epoch_end"
    shutil.copytree(reference["dir"], ckpt)
    assert _main(paths, ckpt, RUN + ["--checkpoint.restore_from", "epoch_0_step_3"]) == 0
    _same(_records(ckpt), reference["stream"])
