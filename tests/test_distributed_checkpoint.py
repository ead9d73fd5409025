"""Sharded checkpoints: a 2-rank FSDP2 (or TP) run resumes on 1 rank and on 2 ranks with the losses of the
uninterrupted run, its consolidated directory loads with plain transformers, and foreign checkpoints are refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import addition_rows, write_jsonl
from nemo_like.components.distributed.fork_launcher import run_on_ranks

DIST_YAML = str(Path(__file__).parent / "configs" / "tiny_sft_dist.yaml")


@pytest.fixture(scope="module")
def data_env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("dist_ckpt")
    return {
        "TEST_MODEL_DIR": tiny_model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(tmp / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(tmp / "val.jsonl", addition_rows(6, offset=5)),
        "TEST_CKPT_DIR": str(tmp / "unused"),
        "root": str(tmp),
    }


def train(env: dict[str, str], ckpt_dir: str, max_steps: int, overrides: dict | None = None) -> list[dict]:
    """One rank of the recipe, checkpointing every 2 steps and resuming from LATEST (runs in a fork)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("TEST_")})
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(DIST_YAML)
    cfg.set_by_path("checkpoint.checkpoint_dir", ckpt_dir)
    cfg.set_by_path("checkpoint.restore_from", "LATEST")
    cfg.set_by_path("step_scheduler.max_steps", max_steps)
    for key, value in (overrides or {}).items():
        cfg.set_by_path(key, value)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    history = recipe.run_train_validation_loop()["history"]
    return [{"step": h["step"], "loss": h["loss"], "grad_norm": h["grad_norm"]} for h in history]


def _close(a: list[dict], b: list[dict], tol: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= tol and abs(x["grad_norm"] - y["grad_norm"]) <= 1e-5, (a, b)


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_on_one_and_two_ranks(data_env):
    root = Path(data_env["root"])
    whole = run_on_ranks(train, 2, data_env, str(root / "whole"), 4)[0]
    assert [r["step"] for r in whole] == list(range(4))

    first = run_on_ranks(train, 2, data_env, str(root / "two"), 2)[0]
    _close(first, whole[:2], 0.0)
    step_dir = root / "two" / "epoch_0_step_1"
    assert (step_dir / "model" / ".metadata").is_file() and (step_dir / "optim" / ".metadata").is_file()
    assert not (step_dir / "model" / "model.safetensors").exists()  # the shards are the weights
    assert sorted(os.listdir(step_dir / "rng")) == ["rng.pt", "rng_rank1.pt"]
    shutil.copytree(root / "two", root / "one")

    on_two = run_on_ranks(train, 2, data_env, str(root / "two"), 4)[0]
    on_one = run_on_ranks(train, 1, data_env, str(root / "one"), 4)[0]
    _close(on_two, whole[2:], 1e-6)
    _close(on_one, whole[2:], 1e-6)


@pytest.mark.slow
def test_single_process_checkpoint_resumes_on_two_ranks(data_env):
    root = Path(data_env["root"])
    whole = run_on_ranks(train, 1, data_env, str(root / "single_whole"), 4)[0]
    run_on_ranks(train, 1, data_env, str(root / "single"), 2)
    assert (root / "single" / "epoch_0_step_1" / "model" / "model.safetensors").is_file()
    resumed = run_on_ranks(train, 2, data_env, str(root / "single"), 4)[0]
    _close(resumed, whole[2:], 1e-6)


def test_consolidated_directory_loads_with_plain_transformers(data_env):
    from transformers import AutoModelForCausalLM

    from nemo_like.components.checkpoint.dcp import load_model_shards

    ckpt = Path(data_env["root"]) / "consolidated"
    run_on_ranks(train, 2, data_env, str(ckpt), 2)
    step_dir = ckpt / "epoch_0_step_1" / "model"
    model = AutoModelForCausalLM.from_pretrained(step_dir / "consolidated")
    assert (step_dir / "consolidated" / "tokenizer.json").is_file()
    # The same weights as the shards read back into a plain model (one process, no process group).
    reference = AutoModelForCausalLM.from_pretrained(data_env["TEST_MODEL_DIR"])
    load_model_shards(reference, str(step_dir))
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    trained = AutoModelForCausalLM.from_pretrained(data_env["TEST_MODEL_DIR"]).state_dict()
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], loaded["model.layers.0.mlp.up_proj.weight"])


def test_tensor_parallel_checkpoint_resumes_on_one_rank(data_env):
    root = Path(data_env["root"])
    tp = {"distributed.tp_size": 2, "distributed.sequence_parallel": True}
    whole = run_on_ranks(train, 1, data_env, str(root / "tp_whole"), 4)[0]  # TP trains as one process does
    first = run_on_ranks(train, 2, data_env, str(root / "tp"), 2, tp)[0]
    _close(first, whole[:2], 1e-5)
    resumed = run_on_ranks(train, 1, data_env, str(root / "tp"), 4)[0]
    _close(resumed, whole[2:], 1e-5)


def test_lora_under_fsdp2_saves_a_peft_adapter_and_resumes_on_one_rank(data_env):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = Path(data_env["root"])
    lora = {"peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig", "match_all_linear": True, "dim": 4}}
    whole = run_on_ranks(train, 1, data_env, str(root / "lora_whole"), 3, lora)[0]
    first = run_on_ranks(train, 2, data_env, str(root / "lora"), 2, lora)[0]
    _close(first, whole[:2], 1e-6)
    resumed = run_on_ranks(train, 1, data_env, str(root / "lora"), 3, lora)[0]
    _close(resumed, whole[2:], 1e-6)
    model_dir = root / "lora" / "epoch_0_step_1" / "model"
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(data_env["TEST_MODEL_DIR"]), model_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir / "consolidated")
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    assert (adapted(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max() < 1e-5


def test_a_checkpoint_of_another_model_is_refused_in_one_line(data_env, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointError, CheckpointingConfig

    root = Path(data_env["root"])
    if not (root / "consolidated" / "LATEST").exists():
        run_on_ranks(train, 2, data_env, str(root / "consolidated"), 2)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    checkpointer = Checkpointer(CheckpointingConfig(checkpoint_dir=str(root / "consolidated")))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        checkpointer.load(checkpointer.latest(), {"model": other, "optim": torch.optim.AdamW(other.parameters())})
    message = str(err.value)
    assert "\n" not in message and "written for another model" in message and "shape" in message
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing half-loaded


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch payload_ran",))


def test_metadata_that_would_run_code_is_refused(tmp_path, monkeypatch):
    import pickle

    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config
    from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointError, CheckpointingConfig

    monkeypatch.chdir(tmp_path)
    step = tmp_path / "ckpt" / "epoch_0_step_0" / "model"
    step.mkdir(parents=True)
    (step / ".metadata").write_bytes(pickle.dumps(_Payload()))
    checkpointer = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path / "ckpt")))
    with pytest.raises(CheckpointError, match=r"cannot be read safely .*posix.system.* not DCP metadata"):
        checkpointer.load(checkpointer.latest(), {"model": LlamaForCausalLM(tiny_llama_config(64))})
    assert not (tmp_path / "payload_ran").exists()


def test_data_position_carries_over_between_rank_counts():
    """Rank 0's loader state of a 2-rank run, rescaled for 1 rank (and back), continues with the next global sample."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    from nemo_like.components.checkpoint.dcp import reshard_loader_state, save_loader_layout

    data = list(range(40))

    def loader(dp: int, rank: int) -> StatefulDataLoader:
        sampler = StatefulDistributedSampler(data, num_replicas=dp, rank=rank, shuffle=False) if dp > 1 else None
        return StatefulDataLoader(data, batch_size=2, sampler=sampler)

    saved = loader(2, 0)
    it = iter(saved)
    seen = [next(it) for _ in range(3)]  # 3 batches of rank 0 = 12 samples over both ranks
    assert [t.tolist() for t in seen] == [[0, 2], [4, 6], [8, 10]]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_loader_layout(d, saved)
        one = loader(1, 0)
        one.load_state_dict(reshard_loader_state(saved.state_dict(), d, one))
        assert next(iter(one)).tolist() == [12, 13]
        four = [loader(4, r) for r in range(4)]
        firsts = []
        for ld in four:
            ld.load_state_dict(reshard_loader_state(saved.state_dict(), d, ld))
            firsts.append(next(iter(ld)).tolist())
        assert sorted(x for f in firsts for x in f) == list(range(12, 20))
