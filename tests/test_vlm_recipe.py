"""The vision-language SFT recipe end to end on a tiny Idefics3: a frozen vision tower stays bit-identical, a
SIGKILLed run resumes to the uninterrupted losses bit for bit, and the consolidated checkpoint reloads with plain
transformers to the in-memory logits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fork_logged, step_records
from test_dpo_resume import _kill_after_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny_vlm/sft_shapes.yaml"
SMALL = {"step_scheduler.global_batch_size": 4, "step_scheduler.local_batch_size": 4,
         "step_scheduler.max_steps": 6, "step_scheduler.val_every_steps": 3, "step_scheduler.ckpt_every_steps": 2,
         "dataset.limit_dataset_samples": 48, "validation_dataset.limit_dataset_samples": 8,
         "freeze_config.freeze_vision_tower": True}
TIMINGS = ("time_s", "mem_gib", "tps")


def _recipe(ckpt: Path, **overrides):
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.vlm.finetune import FinetuneRecipeForVLM

    cfg = load_yaml_config(RECIPE)
    for key, value in {**SMALL, "checkpoint.checkpoint_dir": str(ckpt), **overrides}.items():
        cfg.set_by_path(key, value)
    recipe = FinetuneRecipeForVLM(cfg)
    recipe.setup()
    return recipe


def _vision(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from nemo_like.components.models.vlm_parts import vlm_parts

    towers = vlm_parts(model)["vision_tower"]
    return {n: p.detach().clone() for n, p in model.named_parameters() if any(n.startswith(t) for t in towers)}


def _records(ckpt: Path) -> dict[int, dict]:
    return step_records(ckpt, TIMINGS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run (frozen vision tower), its model before and after, and its checkpoint directory."""
    ckpt = tmp_path_factory.mktemp("vlm") / "whole"
    recipe = _recipe(ckpt)
    before = _vision(recipe.model)
    assert before and all(not p.requires_grad for n, p in recipe.model.named_parameters() if n in before)
    recipe.run_train_validation_loop()
    return recipe, before, ckpt


def test_a_frozen_vision_tower_gets_no_gradient_and_ends_bit_identical(trained):
    recipe, before, _ = trained
    after = _vision(recipe.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    params = dict(recipe.model.named_parameters())
    assert all(params[n].grad is None for n in before)
    moved = [n for n, p in params.items() if n not in before and p.requires_grad]
    assert moved  # the language model trained


def test_the_consolidated_checkpoint_reloads_with_transformers_to_the_same_logits(trained):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from nemo_like.components.datasets.vlm.collate_fns import default_collate_fn

    recipe, _, ckpt = trained
    last = ckpt / (ckpt / "LATEST").read_text().strip()
    consolidated = last / "model" / "consolidated"
    model = AutoModelForImageTextToText.from_pretrained(consolidated, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(consolidated)
    batch = default_collate_fn([recipe.val_dataset[i] for i in range(3)], processor)
    batch.pop("labels")
    recipe.model.eval()
    with torch.no_grad():
        want = recipe.model(**batch).logits
        got = model(**batch).logits
    assert (want - got).abs().max().item() <= 1e-5


def _train_forked(ckpt: Path) -> None:
    recipe = _recipe(ckpt, **{"dataloader.shuffle": True})
    recipe.run_train_validation_loop()


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(trained, tmp_path):
    _, _, whole = trained
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    latest = _kill_after_checkpoint(fork_logged(log, _train_forked, killed), killed, log, None)
    pid = fork_logged(log, _train_forked, killed)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-3000:]
    assert "resumed from" in log.read_text() and latest
    want, got = _records(whole), _records(killed)
    assert sorted(want) == sorted(got) == list(range(SMALL["step_scheduler.max_steps"]))
    assert all(want[s] == got[s] for s in want), [(want[s], got[s]) for s in want if want[s] != got[s]]


def test_lora_adapts_the_language_model_only_and_its_merged_checkpoint_loads(tmp_path):
    from transformers import AutoModelForImageTextToText

    lora = {"_target_": "nemo_like.components._peft.lora.PeftConfig", "match_all_linear": True, "dim": 4, "alpha": 8}
    recipe = _recipe(tmp_path / "lora", **{"peft": lora, "step_scheduler.max_steps": 2})
    adapted = [n for n, _ in recipe.model.named_modules() if n.endswith("lora_A")]
    assert adapted and all(".language_model." in n or n.startswith("model.text_model") for n in adapted), adapted
    recipe.run_train_validation_loop()
    last = tmp_path / "lora" / (tmp_path / "lora" / "LATEST").read_text().strip()
    merged = AutoModelForImageTextToText.from_pretrained(last / "model" / "consolidated")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_like.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_finetune_command_runs_the_vlm_recipe_for_an_image_text_config_and_refuses_packing(tmp_path):
    out = _cli("finetune", "-c", str(RECIPE), "--packed_sequence.packed_sequence_size", "64")
    assert out.returncode == 2 and "packed_sequence.packed_sequence_size" in out.stderr
    assert "vision-language" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli("finetune", "-c", str(RECIPE), "--freeze_config.freez_vision_tower", "true")
    assert out.returncode == 2 and "freez_vision_tower" in out.stderr, out.stderr


def _losses(ckpt: str, world: int) -> list[float]:
    recipe = _recipe(Path(ckpt), **{"step_scheduler.max_steps": 3, "checkpoint.enabled": False,
                                    "step_scheduler.local_batch_size": 4 // world, "distributed.dp_size": world, "dataloader.shuffle": False,
                                    "validation_dataset.limit_dataset_samples": 4})
    return [round(float(h["loss"]), 5) for h in recipe.run_train_validation_loop()["history"]]


@pytest.mark.slow
def test_two_fsdp2_ranks_give_the_single_process_losses(tmp_path):
    from nemo_like.components.distributed.fork_launcher import run_on_ranks

    one = run_on_ranks(_losses, 1, str(tmp_path / "one"), 1)[0]
    two = run_on_ranks(_losses, 2, str(tmp_path / "two"), 2)
    assert two[0] == two[1]
    assert two[0] == pytest.approx(one, abs=1e-4), (one, two[0])
