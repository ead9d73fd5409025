"""The real lm-eval harness on our checkpoints and on the project's own held-out task YAMLs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICKSTART_EVAL_ROWS, REPO
from nemo_like.cli import main as cli
from nemo_like.components.eval.exact_match import build_prompt, load_jsonl_rows
from nemo_like.eval_tasks import TASKS_DIR

TASK = "nemo_like_quickstart"
METRIC = "exact_match,strict-match"


def _samples(path: Path, filter_name: str = "strict-match") -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["doc_id"]: r for r in rows if r["filter"] == filter_name}


def _eval(*args: str) -> dict:
    """`nemo-like eval` on the quickstart's held-out rows; returns its results JSON and samples."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = cli(["eval", *args, "--tasks", TASK, "--limit", str(QUICKSTART_EVAL_ROWS), "--batch-size", "50",
                    "--log-samples"])
    assert code == 0
    printed = out.getvalue()
    assert f"|{TASK}|" in printed.replace(" ", "")  # the table was printed
    path = Path(next(line for line in printed.splitlines() if line.startswith("results: ")).split(": ", 1)[1])
    results = json.loads(path.read_text())
    return {"path": path, "score": results["summary"][TASK][METRIC], "results": results,
            "samples": _samples(path.with_name(path.name.removesuffix(".json") + ".samples.jsonl"))}


@pytest.mark.slow
def test_nemo_like_eval_reproduces_the_quickstart_accuracy_change(quickstart_lora_run, tmp_path):
    from nemo_like._transformers.embedded import embedded_model_dir

    run = quickstart_lora_run
    step = run["last_checkpoint"]
    before = _eval("--checkpoint", embedded_model_dir(), "--output", str(tmp_path / "before"))
    after = _eval("--checkpoint", str(step))  # the merged model/consolidated, results beside the checkpoint
    adapter = _eval("--checkpoint", str(step), "--use-adapter")  # base + PEFT adapter (lm-eval's peft=)
    print(f"lm-eval {TASK} strict exact match, {QUICKSTART_EVAL_ROWS} rows: before {before['score']:.2f}, "
          f"after {after['score']:.2f} (merged), {adapter['score']:.2f} (adapter); quickstart printed "
          f"{run['before']:.2f} -> {run['after']:.2f}")

    assert after["path"] == step / "lm_eval_results.json" and adapter["path"] == step / "lm_eval_results_peft.json"
    assert after["results"]["pretrained"] == str(step / "model" / "consolidated")
    assert adapter["results"]["peft"] == str(step / "model")
    assert before["score"] == pytest.approx(run["before"]) and after["score"] == pytest.approx(run["after"])
    assert after["score"] - before["score"] == pytest.approx(run["after"] - run["before"])
    # Base + adapter writes the same answers as the merged model, row by row.
    assert adapter["score"] == after["score"]
    assert {i: s["filtered"] for i, s in adapter["samples"].items()} == {i: s["filtered"] for i, s in after["samples"].items()}
    assert len(after["samples"]) == QUICKSTART_EVAL_ROWS


@pytest.mark.slow
def test_shipped_task_sends_the_training_prompt_and_runs_from_the_lm_eval_command(tiny_model_dir, tmp_path):
    """The task YAMLs work with lm-eval's own CLI from any directory, and the prompt is the quickstart's."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
           "--include_path", TASKS_DIR, "--tasks", f"{TASK},{TASK}_plain", "--limit", "3", "--batch_size", "3",
           "--apply_chat_template", "--log_samples", "--output_path", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, HF_DATASETS_OFFLINE="1"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TASK in proc.stdout and f"{TASK}_plain" in proc.stdout

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = load_jsonl_rows(REPO / "data" / "quickstart" / "test.jsonl", limit=3)
    (samples_file,) = out.rglob(f"samples_{TASK}_2*.jsonl")  # the chat task, not the _plain one
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    sent = {s["doc_id"]: s["arguments"]["gen_args_0"]["arg_0"] for s in samples if s["filter"] == "strict-match"}
    mapping = {"question": "question", "answer": "answer"}
    assert sent == {i: build_prompt(row, tokenizer, mapping, use_chat_template=True) for i, row in enumerate(rows)}


def test_checkpoint_resolution_errors_name_the_path(tmp_path):
    from nemo_like.components.eval.lm_eval_harness import resolve_checkpoint

    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="no transformers model here"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--use-adapter given but there is no adapter_config.json"):
        resolve_checkpoint(str(tmp_path), use_adapter=True)


@pytest.mark.slow
def test_evaluation_section_scores_the_trained_model_like_its_saved_checkpoint(tmp_path, monkeypatch, tiny_model_dir,
                                                                              addition_data):
    """`evaluation:` scores the model in memory at the end of training; the saved checkpoint answers the same."""
    from nemo_like.components.eval.lm_eval_harness import evaluate_checkpoint
    from nemo_like.recipes.llm.run import main as finetune

    ckpt = tmp_path / "ckpt"
    for key, value in {"TEST_MODEL_DIR": tiny_model_dir, "TEST_TRAIN_JSONL": addition_data["train"],
                       "TEST_VAL_JSONL": addition_data["validation"], "TEST_CKPT_DIR": str(ckpt)}.items():
        monkeypatch.setenv(key, value)
    assert finetune(["--config", str(REPO / "tests" / "configs" / "tiny_sft.yaml"), "--step_scheduler.max_steps", "2",
                     "--evaluation.tasks", TASK, "--evaluation.limit", "4", "--evaluation.batch_size", "4",
                     "--evaluation.log_samples", "true", "--tensorboard.log_dir", str(tmp_path / "tb")]) == 0
    step = ckpt / (ckpt / "LATEST").read_text().strip()
    in_memory = json.loads((step / "lm_eval_results.json").read_text())
    assert in_memory["summary"][TASK].keys() >= {METRIC, "exact_match,flexible-extract"}

    saved = evaluate_checkpoint(str(step), TASK, limit=4, batch_size=4, output=str(tmp_path / "saved"),
                                log_samples=True)
    assert saved["target"].pretrained == str(step / "model" / "consolidated")
    assert saved["summary"] == in_memory["summary"]
    answers = _samples(step / "lm_eval_results.samples.jsonl")
    assert len(answers) == 4
    assert {i: s["response"] for i, s in answers.items()} == {
        i: s["response"] for i, s in _samples(Path(saved["samples_path"])).items()}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    (scalar,) = events.Scalars(f"eval/{TASK}/exact_match/strict-match")
    assert scalar.value == pytest.approx(in_memory["summary"][TASK][METRIC])
