"""The SFT recipe end to end: NeMo AutoModel YAML shapes, CLI overrides, loss parity, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, addition_rows, write_jsonl
from nemo_like.components.datasets.utils import default_collater
from nemo_like.config.loader import ConfigNode
from nemo_like.recipes.llm.run import main
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

CONFIGS = Path(__file__).parent / "configs"
TINY = str(CONFIGS / "tiny_sft.yaml")

CUSTOM_DATASET = '''
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import ColumnMappedTextInstructionDataset

def build_my_dataset(tokenizer, split, limit_dataset_samples=None):
    path = {paths!r}[split]
    return ColumnMappedTextInstructionDataset(path, {{"context": "instruction", "question": "input", "answer": "response"}},
                                              tokenizer, limit_dataset_samples=limit_dataset_samples)
'''


@pytest.fixture()
def env(tiny_sft_env):
    return tiny_sft_env


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_conservative_finetune_yaml_runs_with_a_user_dataset_module(env, monkeypatch):
    custom = env["tmp"] / "custom_dataset.py"
    custom.write_text(CUSTOM_DATASET.format(paths={"train": env["train"], "validation": env["validation"]}))
    monkeypatch.setenv("TEST_CUSTOM_DATASET", str(custom))
    monkeypatch.setenv("NEMO_LIKE_ENABLE_USER_MODULES", "1")
    assert main(["--config", str(CONFIGS / "conservative_finetune.yaml")]) == 0
    # 16 rows, global batch 32 of local 4: one (short) optimizer step per epoch.
    rows = _jsonl(env["ckpt"] / "training.jsonl")
    assert [r["step"] for r in rows] == [0]
    assert (env["ckpt"] / "epoch_0_step_0" / "model" / "consolidated" / "config.json").exists()
    assert (env["ckpt"] / "LATEST").read_text().strip() == "epoch_0_step_0"


def test_small_dataset_peft_yaml_runs_and_saves_an_adapter(env):
    assert main(["--config", str(CONFIGS / "small_dataset_peft.yaml")]) == 0
    rows = _jsonl(env["ckpt"] / "training.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]  # 3 epochs of one step (16 rows / 16)
    last = env["ckpt"] / "epoch_2_step_2" / "model"
    assert (last / "adapter_model.safetensors").exists() and (last / "adapter_config.json").exists()
    assert len(_jsonl(env["ckpt"] / "validation.jsonl")) == 3  # every epoch end is a checkpoint, so a validation


def test_cli_overrides_take_effect(env):
    assert main(["--config", TINY, "--optimizer.lr", "1e-5", "--step_scheduler.max_steps", "3"]) == 0
    rows = _jsonl(env["ckpt"] / "training.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["lr"] == 1e-5 for r in rows)
    saved = yaml.safe_load((env["ckpt"] / "epoch_0_step_2" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 1e-5 and saved["step_scheduler"]["max_steps"] == 3


def _recipe_losses(local: int, global_: int, steps: int) -> list[float]:
    from nemo_like.config.loader import load_yaml_config

    cfg = load_yaml_config(TINY)
    cfg.set_by_path("step_scheduler.local_batch_size", local)
    cfg.set_by_path("step_scheduler.global_batch_size", global_)
    cfg.set_by_path("step_scheduler.max_steps", steps)
    cfg.set_by_path("step_scheduler.val_every_steps", None)
    cfg.set_by_path("checkpoint.enabled", False)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    return [h["loss"] for h in recipe.run_train_validation_loop()["history"]]


def _reference_losses(model_dir: str, train: str, tokenizer, batch: int, steps: int) -> list[float]:
    """A plain loop: whole batch at once, mean CE over label tokens, AdamW."""
    from transformers import AutoModelForCausalLM

    from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
        ColumnMappedTextInstructionDataset,
    )

    ds = ColumnMappedTextInstructionDataset(train, {"context": "instruction", "question": "input", "answer": "response"}, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        b = default_collater([ds[i] for i in range(step * batch, (step + 1) * batch)], pad_token_id=tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_parity_with_plain_loop_and_grad_accumulation(env, tiny_model_dir, tiny_tokenizer):
    ref = _reference_losses(tiny_model_dir, env["train"], tiny_tokenizer, batch=4, steps=4)
    accumulated = _recipe_losses(local=1, global_=4, steps=4)
    whole = _recipe_losses(local=4, global_=4, steps=4)
    assert ref[-1] < ref[0]
    assert max(abs(a - b) for a, b in zip(whole, ref)) < 1e-6, (whole, ref)
    assert max(abs(a - b) for a, b in zip(accumulated, whole)) < 1e-6, (accumulated, whole)


def _bad(tmp: Path, rows: str) -> str:
    path = tmp / "bad.jsonl"
    path.write_text(rows, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda t: ["--dataset._target_", "nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDatasett"],
         ["dataset._target_", "ColumnMappedTextInstructionDataset"]),
        (lambda t: ["--loss_fn._target_", "os.system"], ["loss_fn._target_", "os.system", "NEMO_LIKE_ENABLE_USER_MODULES"]),
        (lambda t: ["--dataset.path_or_dataset_id", str(t / "missing.jsonl")], ["missing.jsonl", "not found"]),
        (lambda t: ["--dataset.path_or_dataset_id", _bad(t, '{"instruction": "a", "input": "b", "response": "c"}\n{"instruction": \n')],
         ["bad.jsonl:2", "invalid JSON"]),
        (lambda t: ["--dataset.column_mapping.answer", "output"], ["column 'output'", "column_mapping.answer"]),
        (lambda t: ["--dataset.path_or_dataset_id", _bad(t, '{"instruction": "a", "input": "b", "response": ""}\n')],
         ["bad.jsonl:1", "empty answer"]),
        (lambda t: ["--dataset.seq_length", "4"], ["train.jsonl:1", "prompt alone", "seq_length 4"]),
        (lambda t: ["--optimzer.lr", "1e-5"], ["optimzer", "optimizer"]),
    ],
    ids=["unknown-target", "not-allow-listed", "missing-file", "malformed-jsonl", "missing-column", "empty-answer",
         "prompt-too-long", "typo-section"],
)
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(env, capsys, make_args, expected):
    assert main(["--config", TINY, *make_args(env["tmp"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("error: ") and "Traceback" not in "\n".join(err)
    for word in expected:
        assert word in line, (word, line)
    assert not env["ckpt"].exists()


@pytest.mark.slow
def test_torchrun_single_process_end_to_end(env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "examples/llm_finetune/finetune.py",
           "--config", TINY, "--step_scheduler.max_steps", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nccl" not in proc.stderr  # gloo picked for CPU without a warning when nothing was asked
    assert [r["step"] for r in _jsonl(env["ckpt"] / "training.jsonl")] == [0, 1]


def test_adamw_is_fused_on_cuda_unless_the_yaml_chooses(env):
    """The decision only (no GPU here): CUDA + torch AdamW -> fused; CPU, or a YAML that picks, -> as given."""
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.builders.optimizer import optimizer_defaults

    cfg = load_yaml_config(TINY)
    assert optimizer_defaults(cfg.optimizer, torch.device("cuda")) == {"fused": True}
    assert optimizer_defaults(cfg.optimizer, torch.device("cpu")) == {}
    cfg.set_by_path("optimizer.foreach", True)
    assert optimizer_defaults(cfg.optimizer, torch.device("cuda")) == {}
    cfg.set_by_path("optimizer._target_", "torch.optim.SGD")
    assert optimizer_defaults(cfg.optimizer, torch.device("cuda")) == {}
