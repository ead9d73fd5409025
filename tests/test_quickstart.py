"""The quickstart recipe, shortened: embedded SmolLM2, shipped data, a consolidated model that transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from conftest import REPO

QUICKSTART = REPO / "recipes" / "smollm2_135m" / "sft_quickstart.yaml"


def test_shipped_data_is_what_the_generator_makes(tmp_path):
    subprocess.run([sys.executable, str(REPO / "tools" / "make_quickstart_data.py"), "--out", str(tmp_path)], check=True)
    for split in ("train", "validation", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (REPO / "data" / "quickstart" / f"{split}.jsonl").read_bytes()
    questions = {s: {json.loads(line)["question"] for line in (tmp_path / f"{s}.jsonl").open()} for s in ("train", "test")}
    assert not questions["train"] & questions["test"]  # held-out means held out


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


def test_full_quickstart_lora_lifts_held_out_accuracy_with_a_small_adapter(tmp_path):
    """The whole 40-step LoRA quickstart, judged on 50 held-out rows before and after."""
    import re

    from nemo_like._transformers.embedded import embedded_model_dir

    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/llm_finetune/finetune.py", "--config", str(QUICKSTART),
           "--generation_eval.limit", "50", "--validation_dataset.limit_dataset_samples", "16",
           "--checkpoint.checkpoint_dir", str(ckpt)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(re.findall(r"held-out exact match (before|after) training: ([0-9.]+)", proc.stderr))
    before, after = float(found["before"]), float(found["after"])
    print(f"quickstart held-out exact match: before {before:.2f}, after {after:.2f}")
    assert after - before >= 0.4, (before, after)
    adapter = ckpt / "epoch_0_step_39" / "model" / "adapter_model.safetensors"
    base = os.path.join(embedded_model_dir(), "model.safetensors")
    assert adapter.stat().st_size < 0.05 * os.path.getsize(base)
