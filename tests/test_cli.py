"""One command for everything: `nemo-like finetune | eval | plot | generate | merge-lora`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from nemo_like.cli import COMMANDS
from nemo_like.cli import main as cli

TINY = str(REPO / "tests" / "configs" / "tiny_sft.yaml")


def _run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_like.cli", *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def _help(command: str) -> int:
    try:
        return cli([command, "--help"])
    except SystemExit as done:  # argparse ends --help this way
        return int(done.code or 0)


def test_help_lists_every_command_and_each_command_has_its_own_help(capsys):
    proc = _run("--help")
    assert proc.returncode == 0
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert listed == set(COMMANDS), proc.stdout
    for command in COMMANDS:
        assert _help(command) == 0
        assert f"usage: nemo-like {command}" in capsys.readouterr().out
    assert cli(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_nproc_per_node_hands_off_to_torchrun_with_the_same_losses(tmp_path, tiny_model_dir, addition_data):
    env = dict(os.environ, TEST_MODEL_DIR=tiny_model_dir, TEST_TRAIN_JSONL=addition_data["train"],
               TEST_VAL_JSONL=addition_data["validation"])
    losses = {}
    for nproc in (1, 2):
        ckpt = tmp_path / f"nproc{nproc}"
        proc = _run("finetune", "-c", TINY, "--nproc-per-node", str(nproc), "--step_scheduler.max_steps", "3",
                    "--checkpoint.enabled", "false", env=dict(env, TEST_CKPT_DIR=str(ckpt)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[nproc] = [json.loads(line)["loss"] for line in (ckpt / "training.jsonl").read_text().splitlines()]
    # Two ranks of local batch 2 make the same global batch of 4 as one rank accumulating two micro-batches.
    assert len(losses[2]) == 3 and losses[2] == pytest.approx(losses[1], rel=1e-5)
    bad = _run("finetune", "-c", TINY, "--nproc-per-node", "zero")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --nproc-per-node: 'zero' is not a positive number of processes"


def test_generate_answers_greedily_with_the_chat_template_like_one_prompt_at_a_time(tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["What is 3 plus 4?", "What is 12 plus 19? Answer with the number only."]
    assert cli(["generate", "--checkpoint", tiny_model_dir, "--max-new-tokens", "6",
                *[a for p in prompts for a in ("--prompt", p)]]) == 0
    printed = capsys.readouterr().out
    answers = [block.split("### answer\n", 1)[1].strip() for block in printed.split("### prompt\n")[1:]]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = []
    for prompt in prompts:  # no batch, no padding: the reference
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert answers == expected
