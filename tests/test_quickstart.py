"""The quickstart recipe, shortened: embedded SmolLM2, shipped data, a consolidated model that transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import QUICKSTART_EVAL_ROWS, REPO, run_quickstart

QUICKSTART = REPO / "recipes" / "smollm2_135m" / "sft_quickstart.yaml"


def test_shipped_data_is_what_the_generator_makes(tmp_path):
    subprocess.run([sys.executable, str(REPO / "tools" / "make_quickstart_data.py"), "--out", str(tmp_path)], check=True)
    for split in ("train", "validation", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (REPO / "data" / "quickstart" / f"{split}.jsonl").read_bytes()
    questions = {s: {json.loads(line)["question"] for line in (tmp_path / f"{s}.jsonl").open()} for s in ("train", "test")}
    assert not questions["train"] & questions["test"]  # held-out means held out


@pytest.mark.slow
def test_short_quickstart_trains_and_its_consolidated_model_loads_with_plain_transformers(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/llm_finetune/finetune.py", "--config", str(QUICKSTART),
           "--step_scheduler.max_steps", "2", "--step_scheduler.val_every_steps", "2",
           "--validation_dataset.limit_dataset_samples", "8", "--generation_eval.limit", "8",
           "--checkpoint.checkpoint_dir", str(ckpt)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out exact match before training" in proc.stderr
    assert "held-out exact match after training" in proc.stderr
    rows = [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["loss"] > 0 for r in rows)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    consolidated = ckpt / "epoch_0_step_1" / "model" / "consolidated"
    model = AutoModelForCausalLM.from_pretrained(consolidated)
    tok = AutoTokenizer.from_pretrained(consolidated)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert tok.decode(out[0, prompt["input_ids"].shape[1]:]).strip()


@pytest.mark.slow
def test_full_quickstart_lora_lifts_held_out_accuracy_with_a_small_adapter(quickstart_lora_run):
    """The whole 40-step LoRA quickstart, judged on the first held-out rows before and after."""
    from nemo_like._transformers.embedded import embedded_model_dir

    before, after = quickstart_lora_run["before"], quickstart_lora_run["after"]
    print(f"LoRA quickstart held-out exact match: before {before:.2f}, after {after:.2f}")
    assert after - before >= 0.4, (before, after)
    adapter = quickstart_lora_run["last_checkpoint"] / "model" / "adapter_model.safetensors"
    base = os.path.join(embedded_model_dir(), "model.safetensors")
    print(f"adapter {adapter.stat().st_size / 1e6:.1f} MB = {adapter.stat().st_size / os.path.getsize(base):.2%} of the base")
    assert adapter.stat().st_size < 0.05 * os.path.getsize(base)


@pytest.mark.slow
def test_lora_quickstart_improves_like_the_full_fine_tune(quickstart_lora_run, tmp_path):
    """Same task, steps, batches and held-out rows: the full fine-tune is the yardstick for the LoRA lift."""
    full = run_quickstart(tmp_path / "full", "--generation_eval.limit", str(QUICKSTART_EVAL_ROWS),
                          "--validation_dataset.limit_dataset_samples", "16", "--checkpoint.enabled", "false",
                          config="sft_full.yaml")
    lora = quickstart_lora_run
    lift_full, lift_lora = full["after"] - full["before"], lora["after"] - lora["before"]
    print(f"held-out exact match, {QUICKSTART_EVAL_ROWS} rows: full {full['before']:.2f} -> {full['after']:.2f}, "
          f"LoRA {lora['before']:.2f} -> {lora['after']:.2f}")
    assert full["before"] == lora["before"]  # same base, same rows
    assert lift_full >= 0.4, full
    assert lift_lora >= lift_full - 0.1, (lift_lora, lift_full)
