"""Several ranks train exactly like one: FSDP2, DDP, HSDP, tensor parallel, context parallel and FSDP2 x TP give
the single-process losses and gradient norms of the SFT recipe (sequence parallel: test_distributed_checkpoint
and test_distributed_parts).

Ranks are forked from the test process (gloo on CPU), so a 2-rank run costs a second or two
instead of a torchrun start-up. Every run clips at max_norm 1.0 (the norms are ~5), so the
clipping of sharded gradients is part of what is compared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import write_jsonl
from nemo_like.components.distributed.fork_launcher import run_on_ranks

DIST_YAML = str(Path(__file__).parent / "configs" / "tiny_sft_dist.yaml")
STEPS = 5


def _uneven_rows(n: int) -> list[dict]:
    """Answers of 1 to 4 repeats: label-token counts differ from row to row, so from rank to rank."""
    rows = []
    for i in range(n):
        a, b = (5 * i) % 23, (3 * i) % 19
        rows.append({"instruction": "Add the numbers.", "input": f"What is {a} plus {b}?",
                     "response": " ".join([str(a + b)] * (1 + (i * 7) % 4))})
    return rows


@pytest.fixture(scope="module")
def dist_env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("dist_parity")
    return {
        "TEST_MODEL_DIR": tiny_model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(tmp / "train.jsonl", _uneven_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(tmp / "val.jsonl", _uneven_rows(8)[::-1]),  # splits evenly over 2 or 4
        "TEST_CKPT_DIR": str(tmp / "ckpt"),
    }


def train(env: dict[str, str], overrides: dict) -> dict:
    """One rank of the recipe (runs in a forked child); what it returns is compared across layouts."""
    os.environ.update(env)
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(DIST_YAML)
    cfg.set_by_path("checkpoint.enabled", False)
    cfg.set_by_path("step_scheduler.max_steps", STEPS)
    cfg.set_by_path("step_scheduler.val_every_steps", STEPS)
    for key, value in overrides.items():
        cfg.set_by_path(key, value)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    # This rank's label tokens per optimizer step, from the samples its sampler deals it.
    sched = recipe.step_scheduler
    indices = list(iter(recipe.dataloader.sampler)) if recipe.dataloader.sampler is not None else []
    per_step = sched.local_batch_size * sched.grad_acc_steps
    labels = [sum(int(t) != -100 for t in recipe.dataset[i]["labels"]) for i in indices]
    calls = []  # q_proj calls of the first block: 2 per micro-batch when activations are recomputed in backward
    q_proj = recipe.model.model.layers[0].self_attn.q_proj
    q_proj.register_forward_pre_hook(lambda m, args: calls.append(1) if m.training else None)
    out = recipe.run_train_validation_loop()
    return {
        "loss": [h["loss"] for h in out["history"]],
        "grad_norm": [h["grad_norm"] for h in out["history"]],
        "label_tokens": [h["num_label_tokens"] for h in out["history"]],
        "rank_label_tokens": [sum(labels[s : s + per_step]) for s in range(0, len(labels), per_step)][:4],
        "val_loss": out["val_loss"],
        "attn": recipe.model.config._attn_implementation,
        "grad_acc": sched.grad_acc_steps,
        "block_calls_per_microbatch": len(calls) / (STEPS * sched.grad_acc_steps),
    }


@pytest.fixture(scope="module")
def single(dist_env) -> dict:
    return run_on_ranks(train, 1, dist_env, {})[0]


DDP = "nemo_like.components.distributed.config.DDPConfig"


@pytest.mark.slow
@pytest.mark.parametrize(
    "world, overrides, tol",
    [
        (2, {}, 1e-6),
        (2, {"distributed_config": {"_target_": DDP}}, 1e-6),
        (2, {"distributed_config.activation_checkpointing": True}, 1e-6),
        (2, {"distributed_config.defer_fsdp_grad_sync": False}, 1e-6),
        (2, {"distributed.tp_size": 2}, 1e-5),
        (2, {"distributed.cp_size": 2}, 1e-5),
        (4, {"distributed.tp_size": 2}, 1e-5),
        (4, {"distributed.dp_replicate_size": 2}, 1e-6),
    ],
    ids=["fsdp2", "ddp", "fsdp2-activation-ckpt", "fsdp2-sync-every-micro-batch", "tp2", "cp2", "fsdp2x-tp2", "hsdp2x2"],
)
def test_ranks_match_one_process(dist_env, single, world, overrides, tol):
    ranks = run_on_ranks(train, world, dist_env, overrides)
    ref = single
    assert ref["grad_acc"] == 4 and ref["loss"][-1] < ref["loss"][0]
    for r in ranks:  # every rank reports the same global figures
        assert r["loss"] == ranks[0]["loss"] and r["val_loss"] == ranks[0]["val_loss"]
    got = ranks[0]
    assert got["label_tokens"] == ref["label_tokens"]
    assert max(abs(a - b) for a, b in zip(got["loss"], ref["loss"])) <= tol, (got["loss"], ref["loss"])
    worst_norm = max(abs(a - b) for a, b in zip(got["grad_norm"], ref["grad_norm"]))
    assert worst_norm <= 1e-5, (got["grad_norm"], ref["grad_norm"])
    assert abs(got["val_loss"] - ref["val_loss"]) <= tol
    if overrides.get("distributed.cp_size", 1) > 1:
        assert got["attn"] == "nemo_like_context_parallel"
    if overrides == {}:
        # Two data-parallel ranks with 2 micro-batches each, and ranks that see different label counts.
        assert got["grad_acc"] == 2
        assert any(a != b for a, b in zip(ranks[0]["rank_label_tokens"], ranks[1]["rank_label_tokens"]))
    if overrides.get("distributed_config.activation_checkpointing"):
        assert got["block_calls_per_microbatch"] == 2.0  # forward, then the recompute in backward
    else:
        assert got["block_calls_per_microbatch"] == 1.0


@pytest.mark.slow
def test_packed_context_parallel_matches_one_process(dist_env):
    """Packed rows split over 2 context-parallel ranks: each document still sees only its own earlier tokens."""
    packed = {"packed_sequence.packed_sequence_size": 96}
    ref = run_on_ranks(train, 1, dist_env, packed)[0]
    ranks = run_on_ranks(train, 2, dist_env, {**packed, "distributed.cp_size": 2})
    assert ranks[0]["loss"] == ranks[1]["loss"] and ranks[0]["attn"] == "nemo_like_context_parallel"
    assert len(ref["loss"]) >= 2 and ranks[0]["label_tokens"] == ref["label_tokens"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["loss"], ref["loss"])) <= 1e-5, (ranks[0]["loss"], ref["loss"])
    assert max(abs(a - b) for a, b in zip(ranks[0]["grad_norm"], ref["grad_norm"])) <= 1e-5
    assert abs(ranks[0]["val_loss"] - ref["val_loss"]) <= 1e-5


def grads_before_each_micro_batch(env: dict[str, str], overrides: dict) -> list[bool]:
    """One rank, two optimizer steps of two micro-batches: whether any sharded gradient exists as each
    micro-batch starts (the optimizer step clears them, so the first of a step always sees none)."""
    os.environ.update(env)
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(DIST_YAML)
    for key, value in {"checkpoint.enabled": False, "step_scheduler.max_steps": 2,
                       "step_scheduler.val_every_steps": None, **overrides}.items():
        cfg.set_by_path(key, value)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    seen: list[bool] = []
    forward = recipe._forward_loss

    def note_then_forward(*args, **kwargs):
        seen.append(any(p.grad is not None for p in recipe.model.parameters() if p.requires_grad))
        return forward(*args, **kwargs)

    recipe._forward_loss = note_then_forward
    recipe.run_train_validation_loop()
    return seen


def test_deferred_fsdp_grad_sync_reduces_once_per_step(dist_env):
    """defer_fsdp_grad_sync (the default, as in NeMo AutoModel): no reduce-scatter until the last micro-batch."""
    deferred = run_on_ranks(grads_before_each_micro_batch, 2, dist_env, {})[0]
    every = run_on_ranks(grads_before_each_micro_batch, 2, dist_env,
                         {"distributed_config.defer_fsdp_grad_sync": False})[0]
    assert deferred == [False, False, False, False]
    assert every == [False, True, False, True]
