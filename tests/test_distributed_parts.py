"""The distributed parts one by one: mesh sizes, TP plans, the context-parallel attention and its gradient,
gradient clipping across meshes, the fork launcher, one-line errors, and generation under FSDP2."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import addition_rows, tiny_llama_config, write_jsonl
from nemo_like.components.distributed.config import DistributedConfig
from nemo_like.components.distributed.context_parallel import local_token_index, shard_batch
from nemo_like.components.distributed.fork_launcher import RankFailed, run_on_ranks
from nemo_like.components.distributed.mesh import plan_mesh
from nemo_like.config.loader import ConfigError

CONFIGS = Path(__file__).parent / "configs"


# ---------------------------------------------------------------------- sizes
def test_mesh_sizes_are_inferred_and_checked():
    plan = plan_mesh(8, DistributedConfig(tp_size=2))
    assert (plan.dp_replicate, plan.dp_shard, plan.cp, plan.tp, plan.dp, plan.dp_cp) == (1, 4, 1, 2, 4, 4)
    hsdp = plan_mesh(16, DistributedConfig(dp_replicate_size=2, tp_size=2, cp_size=2))
    assert hsdp.shape == (2, 2, 2, 2) and hsdp.dp == 4 and hsdp.dp_cp == 8
    # tp is the fastest-moving dimension: neighbouring ranks are tensor-parallel peers
    assert [plan.coordinates(r)["tp"] for r in range(4)] == [0, 1, 0, 1]
    assert [plan.dp_rank(r) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    cases = [
        (8, DistributedConfig(tp_size=3), "distributed.tp_size * cp_size = 3 * 1 does not divide the 8 ranks"),
        (8, DistributedConfig(dp_size=2, tp_size=2), "distributed.dp_size: dp 2 x cp 1 x tp 2 = 4, but 8 ranks"),
        (8, DistributedConfig(dp_replicate_size=3), "distributed.dp_replicate_size: 3 does not divide dp_size 8"),
    ]
    for world, config, message in cases:
        with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
            plan_mesh(world, config)
    with pytest.raises(ConfigError, match="distributed.tp_sise: unknown key"):
        DistributedConfig.from_section({"tp_sise": 2})
    with pytest.raises(ConfigError, match="distributed.cp_size: must be a positive integer"):
        DistributedConfig.from_section({"cp_size": 0})
    assert DistributedConfig.from_section({"dp_size": "none", "tp_size": 2}).dp_size is None


def test_bad_sizes_stop_the_recipe_with_one_line(tmp_path, monkeypatch, tiny_model_dir, capsys):
    from nemo_like.recipes.llm.run import main

    for name, value in {"TEST_MODEL_DIR": tiny_model_dir, "TEST_TRAIN_JSONL": "x", "TEST_VAL_JSONL": "x",
                        "TEST_CKPT_DIR": str(tmp_path / "ckpt")}.items():
        monkeypatch.setenv(name, value)
    assert main(["--config", str(CONFIGS / "tiny_sft_dist.yaml"), "--distributed.tp_size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: distributed.tp_size * cp_size = 2 * 1 does not divide the 1 ranks"]
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------- tensor-parallel plans
def test_models_without_a_plan_are_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    from nemo_like.components.distributed.tp_plans import check_tp_divisibility, get_tp_plan

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ConfigError, match=r"distributed.tp_size: no tensor-parallel plan for GPT2LMHeadModel "
                                          r"\(model type 'gpt2'\).*distributed_config.tp_plan"):
        get_tp_plan(gpt2)
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(tiny_llama_config(64))
    plan = get_tp_plan(llama, sequence_parallel=True)
    assert {"model.layers.*.self_attn.q_proj", "model.layers.*.mlp.down_proj", "lm_head", "model.norm"} <= set(plan)
    custom = get_tp_plan(llama, custom={"model.layers.*.mlp.up_proj": "colwise", "lm_head": "colwise_rep"})
    assert set(custom) == {"model.layers.*.mlp.up_proj", "lm_head"}
    with pytest.raises(ConfigError, match="distributed_config.tp_plan: style 'diagonal'"):
        get_tp_plan(llama, custom={"lm_head": "diagonal"})
    with pytest.raises(ConfigError, match=r"tp_size: 4 does not divide the model's num_key_value_heads \(2\)"):
        check_tp_divisibility(llama, 4)


# ---------------------------------------------------------------------- context parallel
def test_sequence_shards_cover_the_padded_sequence_once():
    batch = {"input_ids": torch.arange(2 * 13).reshape(2, 13), "labels": torch.arange(2 * 13).reshape(2, 13),
             "attention_mask": torch.ones(2, 13, dtype=torch.long)}
    parts = [shard_batch(batch, 2, r) for r in range(2)]
    assert all(p["input_ids"].shape == (2, 8) for p in parts)  # 13 padded to 16 = 2 * 2 chunks of 4
    order = torch.cat([local_token_index(16, 2, r) for r in range(2)])
    assert local_token_index(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]  # chunks 0 and 3: balanced work
    merged = {k: torch.empty(2, 16, dtype=v.dtype) for k, v in parts[0].items()}
    for k in merged:
        merged[k][:, order] = torch.cat([p[k] for p in parts], dim=1)
    assert torch.equal(merged["input_ids"][:, :13], batch["input_ids"])
    assert torch.equal(merged["position_ids"], torch.arange(16).expand(2, 16))
    assert (merged["labels"][:, 13:] == -100).all() and (merged["attention_mask"][:, 13:] == 0).all()
    assert shard_batch(batch, 1, 0) is batch
    with pytest.raises(ConfigError, match="4-D attention mask without position_ids"):
        packed = torch.ones(2, 1, 13, 13, dtype=torch.bool)
        shard_batch({"input_ids": batch["input_ids"], "attention_mask": packed}, 2, 0)


def _cp_attention_vs_full(seed: int) -> dict:
    """On each rank: the context-parallel attention of this rank's slice vs full attention on the whole sequence."""
    import torch.distributed as dist

    from nemo_like.components.distributed.context_parallel import _STATE, context_parallel_attention

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    b, h, hkv, s, d = 2, 4, 2, 16, 8
    q, k, v = torch.randn(b, h, s, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    pad = torch.ones(b, s, dtype=torch.long)
    pad[1, 11:] = 0  # right padding in the second row
    weight = torch.randn(b, s, h, d)  # a fixed projection of the output, so every position gets a gradient
    pos = torch.arange(s)
    allowed = (pos[:, None] >= pos[None, :]) & pad.bool()[:, None, None, :] | torch.eye(s, dtype=torch.bool)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(full[0], full[1].repeat_interleave(2, 1), full[2].repeat_interleave(2, 1),
                                         attn_mask=allowed, scale=d**-0.5).transpose(1, 2)
    (out * weight).sum().backward()

    idx = local_token_index(s, world, rank)
    local = [t[:, :, idx].clone().requires_grad_() for t in (q, k, v)]
    _STATE["group"] = dist.group.WORLD
    mine, _ = context_parallel_attention(torch.nn.Module(), *local, pad[:, idx], scaling=d**-0.5)
    (mine * weight[:, idx]).sum().backward()
    diffs = {"out": (mine - out[:, idx]).abs().max()}
    for name, a, ref in zip("qkv", local, full):
        diffs[f"d{name}"] = (a.grad - ref.grad[:, :, idx]).abs().max()
    return {name: float(value) for name, value in diffs.items()}


def test_context_parallel_attention_and_its_gradients_match_full_attention():
    for ranks in run_on_ranks(_cp_attention_vs_full, 2, 3):
        assert max(ranks.values()) < 1e-5, ranks


# ---------------------------------------------------------------------- gradient clipping
def _tp_clip(seed: int) -> dict:
    """Clip a tensor-parallel model's gradients (FSDP-sharded norms next to TP x FSDP linears)."""
    from transformers import LlamaForCausalLM

    from nemo_like.components.distributed.config import FSDP2Config
    from nemo_like.components.distributed.grad_clip import clip_grad_norm
    from nemo_like.components.distributed.mesh import build_device_mesh
    from nemo_like.components.distributed.parallelizer import parallelize_model

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(64))
    plain = copy.deepcopy(model)
    ids = torch.randint(0, 64, (2, 12))
    F.cross_entropy(plain(input_ids=ids).logits.flatten(0, 1), ids.flatten()).backward()
    ref = torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
    meshes = build_device_mesh(plan_mesh(2, DistributedConfig(tp_size=2)), "cpu")
    parallelize_model(model, meshes, FSDP2Config())
    F.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), ids.flatten()).backward()
    meshes_seen = {tuple(p.grad.device_mesh.mesh_dim_names) for p in model.parameters()}
    norm = clip_grad_norm(model.parameters(), 1.0)
    clipped = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    worst = max(float((clipped[n] - p.grad).abs().max()) for n, p in plain.named_parameters())
    return {"ref": float(ref), "norm": float(norm), "meshes": sorted(meshes_seen), "worst": worst}


def test_clipping_across_meshes_matches_one_process():
    for r in run_on_ranks(_tp_clip, 2, 0):
        assert len(r["meshes"]) == 2  # the trap: norms on the FSDP mesh, linears on FSDP x TP
        assert abs(r["norm"] - r["ref"]) < 1e-5 and r["ref"] > 1.0
        assert r["worst"] < 1e-6  # and the gradients were scaled as torch scales the unsharded ones


# ---------------------------------------------------------------------- launcher and generation
def _fail_on_rank_one() -> int:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank one refuses")
    dist.barrier()  # rank 0 waits here until the launcher ends it
    return 0


def test_a_failing_rank_is_reported_with_its_traceback():
    with pytest.raises(RankFailed, match=r"(?s)rank 1:.*ValueError: rank one refuses"):
        run_on_ranks(_fail_on_rank_one, 2, timeout_s=60)


def _generation_eval(env: dict[str, str]) -> dict:
    os.environ.update(env)
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(str(CONFIGS / "tiny_sft_dist.yaml"))
    cfg.set_by_path("checkpoint.enabled", False)
    cfg.set_by_path("step_scheduler.max_steps", 1)
    cfg.set_by_path("generation_eval", {"path_or_dataset_id": env["TEST_VAL_JSONL"], "max_new_tokens": 4,
                                        "column_mapping": {"context": "instruction", "question": "input",
                                                           "answer": "response"}, "batch_size": 3})
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    out = recipe.run_train_validation_loop()
    return {"before": out["accuracy_before"], "after": out["accuracy_after"]}


@pytest.mark.slow
def test_generation_eval_runs_on_every_rank_under_fsdp2(tmp_path, tiny_model_dir):
    rows = addition_rows(6, offset=5)
    rows[0]["response"] = "?"  # keep at least one answer a random model cannot produce
    env = {"TEST_MODEL_DIR": tiny_model_dir, "TEST_TRAIN_JSONL": write_jsonl(tmp_path / "t.jsonl", addition_rows(8)),
           "TEST_VAL_JSONL": write_jsonl(tmp_path / "v.jsonl", rows), "TEST_CKPT_DIR": str(tmp_path / "ckpt")}
    single = run_on_ranks(_generation_eval, 1, env)[0]
    ranks = run_on_ranks(_generation_eval, 2, env, timeout_s=180)
    assert single["before"] is not None and single["after"] is not None
    assert ranks[0] == ranks[1] == single


def _tp_family(model: torch.nn.Module) -> dict:
    """One forward/backward of ``model`` under TP 2 (without and with sequence parallel) vs the model in one piece."""
    from nemo_like.components.distributed.config import FSDP2Config
    from nemo_like.components.distributed.grad_clip import total_grad_norm
    from nemo_like.components.distributed.mesh import build_device_mesh
    from nemo_like.components.distributed.parallelizer import parallelize_model

    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))  # 10 splits over 2 ranks

    def loss_of(m: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(input_ids=ids).logits.flatten(0, 1).float(), ids.flatten())

    plain = copy.deepcopy(model)
    ref = loss_of(plain)
    ref.backward()
    ref_norm = float(total_grad_norm(plain.parameters()))
    meshes = build_device_mesh(plan_mesh(2, DistributedConfig(tp_size=2)), "cpu")
    out = {}
    built_in = model.config.model_type in ("llama", "qwen2", "qwen3", "mistral")
    for sequence_parallel in (False, True) if built_in else (False,):
        sharded = copy.deepcopy(model)
        parallelize_model(sharded, meshes, FSDP2Config(), sequence_parallel=sequence_parallel)
        loss = loss_of(sharded)
        loss.backward()
        out[sequence_parallel] = (abs(float(loss) - float(ref)),
                                  abs(float(total_grad_norm(sharded.parameters())) - ref_norm))
    return out


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral", "gemma"])
def test_tensor_parallel_plans_of_other_families_match_one_process(model_type):
    """Built-in plans (qwen2, qwen3, mistral) and transformers' own plan as the fallback (gemma)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")  # built here, shared by the forks
    for rank in run_on_ranks(_tp_family, 2, model):
        for sequence_parallel, (loss_diff, norm_diff) in rank.items():
            assert loss_diff < 1e-5 and norm_diff < 1e-5, (model_type, sequence_parallel, loss_diff, norm_diff)
