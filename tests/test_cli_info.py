"""The CLI explains itself: the shipped recipes, a section's fields, the resolved config, an example in every help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_like.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_recipes_lists_every_shipped_recipe_with_its_method():
    out = _cli("recipes")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()}
    shipped = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml"))
    assert sorted(lines) == shipped
    assert lines["recipes/smollm2_135m/dpo_lora.yaml"] == "dpo"
    assert lines["recipes/smollm2_135m/grpo_arithmetic.yaml"] == "grpo"
    assert lines["recipes/smollm2_135m/sft_quickstart.yaml"] == "finetune"
    assert all(len(line.split(None, 2)) == 3 for line in out.stdout.splitlines())  # every one described


def test_config_fields_prints_types_and_defaults_and_names_an_unknown_section():
    out = _cli("config-fields", "step_scheduler")
    assert out.returncode == 0 and "global_batch_size" in out.stdout and "(required)" in out.stdout
    out = _cli("config-fields", "grpo")
    assert out.returncode == 0 and "(grpo)" in out.stdout and "num_generations" in out.stdout
    out = _cli("config-fields", "freeze_config")
    assert out.returncode == 0 and "freeze_vision_tower" in out.stdout and "True" in out.stdout
    out = _cli("config-fields", "step_schedulr")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "step_schedulr" in out.stderr


def test_print_config_applies_overrides_redacts_secrets_and_exits():
    out = _cli("finetune", "-c", "recipes/smollm2_135m/sft_lora.yaml", "--optimizer.lr", "3e-4",
               "--wandb.project", "p", "--wandb.api_key", "abcdef123456", "--print-config")
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert config["optimizer"]["lr"] == 3e-4 and config["wandb"]["api_key"] == "***"
    assert "abcdef123456" not in out.stdout
    out = _cli("finetune", "-c", "recipes/tiny_vlm/sft_shapes.yaml", "--print-config")
    assert out.returncode == 0 and out.stdout.startswith("# vlm recipe")
    out = _cli("dpo", "-c", "recipes/smollm2_135m/dpo_lora.yaml", "--dpo.bta", "0.2", "--print-config")
    assert out.returncode == 2 and "bta" in out.stderr


@pytest.mark.parametrize("command", ["finetune", "dpo", "grpo", "eval", "plot", "generate", "merge-lora", "dry-run",
                                     "recipes", "config-fields"])
def test_every_command_help_gives_an_example(command):
    out = _cli(command, "--help")
    assert out.returncode == 0 and "nemo-like" in out.stdout
    assert "example" in out.stdout.lower(), out.stdout
