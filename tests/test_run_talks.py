"""A run says how far it is: long phases print counts and time left, step lines show ``step N/M`` and the time
left, a fresh run never appends to an earlier one's records, and the shipped recipes pick their backend."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nemo_like.components.checkpoint.earlier_run import EARLIER_RUNS
from nemo_like.components.distributed.init import pick_backend
from nemo_like.components.loggers.phase_progress import EVERY_ENV, PhaseProgress, format_duration, with_progress
from nemo_like.components.loggers.progress import format_step_line
from nemo_like.recipes.llm.run import main
from nemo_like.recipes.sections import DistEnvSection

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
LEFT = r"~\d+(s|m\d\ds|h\d\dm) left"


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _tiny_run(env: dict, *extra: str) -> int:
    return main(["--config", TINY, "--generation_eval.path_or_dataset_id", env["validation"],
                 "--generation_eval.column_mapping", "{question: input, answer: response}",
                 "--generation_eval.max_new_tokens", "3", "--generation_eval.batch_size", "2",
                 "--packed_sequence.packed_sequence_size", "88", *extra])


@pytest.fixture()
def talkative(tiny_sft_env, monkeypatch, one_thread):
    monkeypatch.setenv(EVERY_ENV, "0")  # every piece of work says how far it is: a tiny run takes no time
    return tiny_sft_env


def test_a_tiny_run_shows_counts_and_time_left_for_every_long_phase(talkative, capsys):
    assert _tiny_run(talkative) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # the same text a log file gets: no carriage-return bars
    lines = err.splitlines()

    def said(pattern: str) -> list[str]:
        return [ln for ln in lines if re.match(pattern + r", \d+s elapsed, " + LEFT + "$", ln)]

    assert said(r"generation eval before training: 6/6 rows \(100%\)"), err[-3000:]
    assert said(r"generation eval after training: 2/6 rows \(33%\)"), err[-3000:]
    assert "generation eval before training: 6 rows in 3 batches of up to 2, at most 3 new tokens each" in lines
    assert len(said(r"validation: (\d+)/\1 batches \(100%\)")) == 2, err[-3000:]  # steps 1 and 3
    assert said(r"packing \(max_fill\): 16/16 documents \(100%\)"), err[-3000:]
    assert said(r"tokenizing train.jsonl: 16/16 rows \(100%\)"), err[-3000:]
    assert said(r"checkpoint of step 1: [0-9.]+ MiB/[0-9.]+ MiB \(100%\)"), err[-3000:]
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert len(steps) == 4 and all(re.fullmatch(rf"step {i}/3 \| epoch \d \| loss .* \| {LEFT}", ln)
                                   for i, ln in enumerate(steps)), steps
    # the parsed result lines are unchanged
    assert re.search(r"^held-out exact match after training: [0-9.]+ \(6 rows", err, re.M)


def test_a_fresh_run_moves_an_earlier_run_aside_and_never_appends_to_it(tiny_sft_env, capsys, one_thread):
    ckpt = tiny_sft_env["ckpt"]
    assert main(["--config", TINY, "--step_scheduler.ckpt_every_steps", "2"]) == 0
    first = (ckpt / "training.jsonl").read_text()
    (ckpt / "notes.txt").write_text("mine")  # not a run's output: it stays where it is
    capsys.readouterr()
    assert main(["--config", TINY, "--checkpoint.restore_from", "none", "--step_scheduler.max_steps", "3"]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "held an earlier run" in ln]
    assert len(said) == 1 and said[0].startswith("checkpoint.restore_from none: ") and "2 checkpoints" in said[0]
    assert _steps(ckpt / "training.jsonl") == [0, 1, 2]  # this run's records only
    (earlier,) = (ckpt / EARLIER_RUNS).iterdir()
    assert str(earlier) in said[0]
    assert (earlier / "training.jsonl").read_text() == first  # the earlier run whole, records and checkpoints
    assert (earlier / "LATEST").read_text().strip() == "epoch_0_step_3" and (earlier / "epoch_0_step_1").is_dir()
    assert (ckpt / "LATEST").read_text().strip() == "epoch_0_step_2" and not (ckpt / "epoch_0_step_3").exists()
    assert (ckpt / "notes.txt").read_text() == "mine"
    # the default (LATEST) resumes instead: nothing moves
    assert main(["--config", TINY, "--step_scheduler.max_steps", "4"]) == 0
    assert _steps(ckpt / "training.jsonl") == [0, 1, 2, 3] and len(list((ckpt / EARLIER_RUNS).iterdir())) == 1


def test_phase_progress_lines_are_throttled_and_end_with_the_total(caplog):
    caplog.set_level(logging.INFO, logger="nemo_like")
    quiet = PhaseProgress("packing (best_fit)", 1000, "documents", every_s=3600)
    for _ in range(1000):
        quiet.update()
    assert not caplog.records  # a short phase says nothing extra
    assert list(with_progress(iter(range(3)), "no length")) == [0, 1, 2]  # no len(): no count, no lines
    loud = PhaseProgress("validation", 4, "batches", every_s=0)
    for _ in range(4):
        loud.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("validation: 1/4 batches (25%), ") and lines[-1].startswith("validation: 4/4 ")
    assert len(lines) == 4 and all(re.search(LEFT, ln) for ln in lines)
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_the_step_line_shows_step_of_last_step_and_time_left():
    line = format_step_line({"step": 4, "epoch": 0, "loss": 1.5}, last_step=39, left_s=125)
    assert line == "step 4/39 | epoch 0 | loss 1.5000 | ~2m05s left"
    assert format_step_line({"step": 4, "loss": 1.5}) == "step 4 | loss 1.5000"  # a custom loop's own line


def test_backend_auto_picks_gloo_without_cuda_and_nams_values_still_work(caplog):
    caplog.set_level(logging.WARNING, logger="nemo_like")
    assert pick_backend("auto", cuda=False) == "gloo" and pick_backend(None, cuda=False) == "gloo"
    assert pick_backend("auto", cuda=True) == "nccl" and pick_backend("gloo", cuda=True) == "gloo"
    assert not caplog.records
    assert pick_backend("nccl", cuda=False) == "gloo"  # NeMo AutoModel's value on a laptop: falls back, says so
    assert len(caplog.records) == 1 and "nccl needs CUDA" in caplog.records[0].getMessage()
    assert DistEnvSection().backend == "auto" and DistEnvSection(backend="nccl").backend == "nccl"


def test_shipped_recipes_pick_the_backend_that_fits_the_machine():
    backends = {}
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg.get("dist_env"), dict) and "backend" in cfg["dist_env"]:
            backends[path.name] = cfg["dist_env"]["backend"]
    assert backends and set(backends.values()) == {"auto"}, backends


def test_the_documented_lm_eval_task_loads_with_lm_eval_alone(monkeypatch):
    pytest.importorskip("lm_eval")
    import warnings

    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = REPO / "examples" / "eval" / "custom_task"
    assert "!function" not in (folder / "my_largest_number.yaml").read_text()  # no helper module of ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        task = get_task_dict(["my_largest_number"], TaskManager(include_path=str(folder)))["my_largest_number"]
    docs = list(task.test_docs())
    rows = (REPO / "data" / "quickstart" / "test.jsonl").read_text().splitlines()
    assert len(docs) == len(rows) and task.doc_to_target(docs[0]) == json.loads(rows[0])["answer"]
