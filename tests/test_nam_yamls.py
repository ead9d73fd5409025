"""NeMo AutoModel's recipe shapes run here: each YAML under tests/configs/nam mirrors one of NAM's current
``examples/llm_finetune`` files (its sections, ``_target_``s and fields, with our own values) and trains for
2 steps on the tiny model, reading local data in the hub sets' shapes (``nam_shapes``)."""

from __future__ import annotations

import math
import os

import pytest

import nam_shapes
from conftest import REPO, tiny_llama_config
from nemo_like.components.distributed.fork_launcher import run_on_ranks

NAM_DIR = REPO / "tests" / "configs" / "nam"
TWO_RANKS = {"llama3_2_1b_packed_cp2"}
CASES = sorted(p.stem for p in NAM_DIR.glob("*.yaml") if p.stem not in TWO_RANKS)


@pytest.fixture(scope="module")
def nam_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """The tiny Llama with a 1K context: tool-call rows in a byte-level vocabulary run to a few hundred tokens."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nam_tiny_llama")
    config = tiny_llama_config(len(tiny_tokenizer))
    config.max_position_embeddings = 1024
    LlamaForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def nam_env(tmp_path_factory, nam_model_dir) -> dict[str, str]:
    paths = nam_shapes.write_all(tmp_path_factory.mktemp("nam_data"))
    env = {"NAM_TEST_MODEL": nam_model_dir, "NAM_TEST_TEMPLATES": str(NAM_DIR)}
    for shape in nam_shapes.SHAPES:
        env[f"NAM_TEST_{shape.upper()}"] = paths[shape]
    return env


def run_yaml(env: dict[str, str], path: str, workdir: str) -> dict:
    """What ``finetune.py --config path --step_scheduler.max_steps 2`` does (parse, check every section, build,
    train), in this process."""
    os.environ.update(env)
    os.chdir(workdir)
    from nemo_like.config.arg_parser import parse_args_and_load_config
    from nemo_like.recipes.llm.sft_config import SFT_SCHEMA, check_sft_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = parse_args_and_load_config(["--config", path, "--step_scheduler.max_steps", "2"],
                                     known_sections=SFT_SCHEMA.override_names)
    check_sft_config(cfg)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    result = recipe.run_train_validation_loop()
    return {"history": [{"step": h["step"], "loss": float(h["loss"])} for h in result["history"]],
            "model": type(recipe.model).__name__}


@pytest.mark.parametrize("name", CASES)
def test_nam_shaped_yaml_trains_two_steps(name, nam_env, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    for key, value in nam_env.items():
        monkeypatch.setenv(key, value)
    result = run_yaml(nam_env, str(NAM_DIR / f"{name}.yaml"), str(tmp_path))
    assert [h["step"] for h in result["history"]] == [0, 1]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in result["history"])


@pytest.mark.slow
def test_nam_packed_context_parallel_yaml_on_two_ranks(nam_env, tmp_path):
    path = str(NAM_DIR / "llama3_2_1b_packed_cp2.yaml")
    ranks = run_on_ranks(run_yaml, 2, nam_env, path, str(tmp_path))
    assert [h["step"] for h in ranks[0]["history"]] == [0, 1]
    assert ranks[0]["history"] == ranks[1]["history"]  # one context-parallel group: both ranks see one loss
    assert all(math.isfinite(h["loss"]) for h in ranks[0]["history"])


def test_every_mirror_names_its_nam_file():
    for path in NAM_DIR.glob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Mirrors NeMo AutoModel's examples/llm_finetune/"), path.name
    assert len(list(NAM_DIR.glob("*.yaml"))) >= 25
