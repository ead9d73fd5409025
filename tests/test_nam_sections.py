"""NeMo AutoModel's current recipe sections and fields: each honored with its meaning, or refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from nemo_like.components.checkpoint.config import CheckpointingConfig
from nemo_like.components.distributed.config import DDPConfig, DistributedConfig, FSDP2Config
from nemo_like.components.distributed.mesh import plan_mesh
from nemo_like.components.models.common import BackendConfig
from nemo_like.components.optim.scheduler import build_lr_scheduler
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.sft_config import check_sft_config

MANAGER = "nemo_like.components.distributed.fsdp2.FSDP2Manager"

# The shape of a current NeMo AutoModel example, after nemo_automodel -> nemo_like and local paths.
NAM_STYLE = """
recipe: TrainFinetuneRecipeForNextTokenPrediction
seed: 1234
step_scheduler:
  global_batch_size: 4
  local_batch_size: 2
  ckpt_every_steps: 100
  val_every_steps: 100
  max_steps: 2
  num_epochs: 1
  save_checkpoint_every_epoch: false
  gc_every_steps: 1
dist_env:
  backend: nccl
  timeout_minutes: 1
model:
  _target_: nemo_like.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: ${oc.env:TEST_MODEL_DIR}
  torch_dtype: float32
  backend:
    _target_: nemo_like.components.models.common.BackendConfig
    attn: sdpa
    linear: torch
    rms_norm: torch_fp32
    rope_fusion: false
    experts: torch_mm
    dispatcher: torch
    enable_hf_state_dict_adapter: true
tokenizer:
  _target_: nemo_like._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained
  pretrained_model_name_or_path: ${oc.env:TEST_MODEL_DIR}
compile:
  enabled: false
  mode: default
  fullgraph: false
  dynamic: true
  backend: null
checkpoint:
  enabled: true
  checkpoint_dir: ${oc.env:TEST_CKPT_DIR}
  model_save_format: safetensors
  save_consolidated: final
distributed:
  strategy: fsdp2
  dp_size: none
  dp_replicate_size: 1
  tp_size: 1
  cp_size: 1
  pp_size: 1
  ep_size: 1
  sequence_parallel: false
  activation_checkpointing: true
  defer_fsdp_grad_sync: false
loss_fn:
  _target_: nemo_like.components.loss.masked_ce.MaskedCrossEntropy
dataset:
  _target_: nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
  path_or_dataset_id: ${oc.env:TEST_TRAIN_JSONL}
  column_mapping: {context: instruction, question: input, answer: response}
packed_sequence:
  packed_sequence_size: 0
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn: nemo_like.components.datasets.utils.default_collater
  shuffle: false
optimizer:
  _target_: torch.optim.AdamW
  betas: [0.9, 0.999]
  eps: 1e-8
  lr: 1.0e-3
  weight_decay: 0.0
lr_scheduler:
  lr_decay_style: cosine
  min_lr: 1.0e-6
  start_wd: 0.0
  end_wd: 0.1
  wd_incr_style: linear
ci:
  recipe_owner: someone
  time: "00:15:00"
  checkpoint_robustness:
    hf_kl_threshold: 5e-3
"""


def _config(tmp_path: Path, text: str = NAM_STYLE, **edits: object):
    path = tmp_path / "nam_style.yaml"
    path.write_text(text)
    cfg = load_yaml_config(str(path))
    for key, value in edits.items():
        cfg.set_by_path(key.replace("__", "."), value)
    return cfg


# ------------------------------------------------------------------ distributed:
def test_pipeline_and_expert_parallel_are_refused_in_one_line(tmp_path, tiny_sft_env):
    with pytest.raises(ConfigError, match=r"distributed.pp_size.*pipeline parallel is not supported yet"):
        check_sft_config(_config(tmp_path, distributed__pp_size=2))
    with pytest.raises(ConfigError, match=r"distributed.ep_size.*expert parallel is not supported"):
        DistributedConfig(ep_size=8)
    assert DistributedConfig(ep_size=None, pp_size=None).ep_size == 1  # null: the default, as in NAM


def test_strategy_fsdp2_with_dp_size_none_is_the_default_layout():
    written = DistributedConfig(strategy="fsdp2", dp_size="none", dp_replicate_size="none")
    default = DistributedConfig()
    for world in (1, 2, 4):
        assert plan_mesh(world, written) == plan_mesh(world, default)
    assert written.build_strategy() == default.build_strategy() == FSDP2Config()


def test_fsdp2_manager_target_builds_what_the_strategy_form_builds():
    from nemo_like.components.distributed.fsdp2 import FSDP2Manager

    fields = {"dp_size": 1, "tp_size": 1, "cp_size": 1, "pp_size": 1, "ep_size": None, "sequence_parallel": False,
              "activation_checkpointing": True}
    by_target = DistributedConfig(_target_=MANAGER, **fields)
    by_strategy = DistributedConfig(strategy="fsdp2", **fields)
    assert by_target.build_strategy() == by_strategy.build_strategy()
    assert plan_mesh(1, by_target) == plan_mesh(1, by_strategy)
    assert FSDP2Manager(by_target.build_strategy()).config.activation_checkpointing
    with pytest.raises(ConfigError, match="distributed._target_"):
        DistributedConfig(_target_="nemo_like.components.distributed.megatron_fsdp.MegatronFSDPManager")


def test_strategies_ddp_mapped_megatron_fsdp_refused():
    assert isinstance(DistributedConfig(strategy="ddp", activation_checkpointing=True).build_strategy(), DDPConfig)
    with pytest.raises(ConfigError, match=r"distributed.strategy: not supported here.*use strategy: fsdp2"):
        DistributedConfig(strategy="megatron_fsdp")
    with pytest.raises(ConfigError, match="distributed.defer_fsdp_grad_sync"):
        DistributedConfig(strategy="ddp", defer_fsdp_grad_sync=True)


def test_strategy_options_reach_the_fsdp2_config():
    layout = DistributedConfig(
        defer_fsdp_grad_sync=False, reshard_after_forward=False, activation_checkpointing="full",
        mp_policy={"_target_": "torch.distributed.fsdp.MixedPrecisionPolicy", "param_dtype": "bfloat16",
                   "reduce_dtype": "float32", "output_dtype": "bfloat16", "cast_forward_inputs": True})
    strategy = layout.build_strategy()
    assert (strategy.defer_fsdp_grad_sync, strategy.reshard_after_forward, strategy.activation_checkpointing) == (
        False, False, True)
    policy = strategy.mixed_precision()
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (
        torch.bfloat16, torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="selective"):
        DistributedConfig(activation_checkpointing="selective")
    with pytest.raises(ConfigError, match="contradicts distributed_config"):
        DistributedConfig(defer_fsdp_grad_sync=True).build_strategy(FSDP2Config(defer_fsdp_grad_sync=False))


def test_pipeline_and_moe_blocks_are_inert_without_their_sizes(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="nemo_like"):
        layout = DistributedConfig(pp_size=1, ep_size=1, pipeline={"pp_schedule": "1f1b"},
                                   moe={"reshard_after_forward": False})
    assert layout.build_strategy() == FSDP2Config()
    assert "distributed.pipeline: ignored" in caplog.text and "distributed.moe: ignored" in caplog.text


# ------------------------------------------------------------------ model.backend
def test_backend_sdpa_accepted_transformer_engine_refused(tmp_path, tiny_sft_env):
    assert BackendConfig(attn="sdpa").attn_implementation == "sdpa"
    from nemo_like.components.models.common.utils import BackendConfig as FromUtils

    assert FromUtils is BackendConfig
    for field, value in (("attn", "te"), ("linear", "te"), ("rms_norm", "te"), ("dispatcher", "deepep"),
                         ("experts", "gmm")):
        with pytest.raises(ConfigError, match=rf"model.backend.{field}: '{value}' is not supported here"):
            BackendConfig(**{field: value})
    with pytest.raises(ConfigError, match=r"model.backend.attn \(.*nam_style.yaml:\d+\): 'te' is not supported"):
        check_sft_config(_config(tmp_path, model__backend__attn="te"))


def test_loader_takes_backend_and_tokenizer_paths(tiny_model_dir):
    import nemo_like
    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like._transformers.auto_tokenizer import NeMoAutoTokenizer

    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, backend=BackendConfig(attn="eager"))
    assert model.config._attn_implementation == "eager"
    built = NeMoAutoModelForCausalLM.from_config(model.config, backend={"attn": "sdpa"})
    assert built.config._attn_implementation == "sdpa"
    assert nemo_like.NeMoAutoTokenizer is NeMoAutoTokenizer
    assert NeMoAutoTokenizer.from_pretrained(tiny_model_dir).pad_token is not None


# ------------------------------------------------------------------ top-level and other sections
def test_top_level_fields_recipe_ci_compile_seed_nvtx_fp8(tmp_path, tiny_sft_env):
    sections = check_sft_config(_config(tmp_path))
    assert sections.seed == 1234 and sections.compile.enabled is False and sections.checkpoint.save_consolidated == "final"
    assert sections.distributed.activation_checkpointing is True
    refusals = {
        "recipe": ("nemo_like.recipes.llm.kd.KnowledgeDistillationRecipeForNextTokenPrediction", "not this recipe"),
        "nvtx": (True, "NVTX"),
        "fp8": ({"enabled": True, "recipe_name": "tensorwise"}, "fp8.enabled: FP8 training is not supported"),
        "parallelizer": ({"_target_": "x.parallelize_model"}, "parallelizer.*not supported"),
        "benchmark": ({"warmup_steps": 5}, "benchmark"),
    }
    for key, (value, message) in refusals.items():
        with pytest.raises(ConfigError, match=message):
            check_sft_config(_config(tmp_path, **{key: value}))
    assert check_sft_config(_config(tmp_path, recipe={"_target_": "nemo_like.recipes.llm.train_ft."
                                                      "TrainFinetuneRecipeForNextTokenPrediction"})).recipe
    with pytest.raises(ConfigError, match="seed.*contradicts rng.seed"):
        check_sft_config(_config(tmp_path, rng={"_target_": "nemo_like.components.training.rng.StatefulRNG",
                                                "seed": 1}))
    cfg = _config(tmp_path, fp8={"enabled": False, "recipe_name": "tensorwise", "emulate": False})
    assert check_sft_config(cfg).fp8.enabled is False


def test_compile_enabled_compiles_the_model_in_place(tiny_model_dir):
    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like.recipes.builders.model import compile_model

    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype="float32")
    ids = torch.randint(0, 300, (1, 12))
    expected = model(input_ids=ids).logits
    names = [n for n, _ in model.named_parameters()]
    assert not compile_model(model, {"enabled": False})
    assert compile_model(model, {"enabled": True, "backend": "eager", "dynamic": True})
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert [n for n, _ in model.named_parameters()] == names  # checkpoint keys unchanged


def test_checkpoint_fields():
    assert CheckpointingConfig(save_consolidated="final").save_consolidated == "final"
    assert CheckpointingConfig(save_consolidated="every").save_consolidated is True
    assert CheckpointingConfig(dequantize_base_checkpoint=True, model_save_format="torch_save")
    with pytest.raises(ConfigError, match="checkpoint.save_consolidated"):
        CheckpointingConfig(save_consolidated="sometimes")


def test_weight_decay_schedule_follows_start_wd_to_end_wd():
    def weight_decays(style: str) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.0)
        scheduler = build_lr_scheduler(optimizer, 10, start_wd=0.01, end_wd=0.1, wd_incr_style=style)
        seen = [optimizer.param_groups[0]["weight_decay"]]
        for _ in range(12):
            scheduler.step(1)
            seen.append(optimizer.param_groups[0]["weight_decay"])
        return seen

    def expected(n: int, style: str) -> float:  # rises over wd_incr_steps (= the run's 10 steps), then holds
        ratio = min(n / 10, 1.0)
        coeff = ratio if style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return 0.01 + coeff * (0.1 - 0.01)

    for style in ("linear", "cosine"):
        assert weight_decays(style) == pytest.approx([expected(n, style) for n in range(13)])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.05)
    build_lr_scheduler(optimizer, 10).step(5)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05  # no schedule asked for: the optimizer's own
    with pytest.raises(ValueError, match="wd_incr_style"):
        build_lr_scheduler(optimizer, 10, start_wd=0.0, end_wd=0.1)  # constant cannot rise


def _checkpoint_steps(every_epoch: bool, ckpt_every: int | None = 100) -> list[int]:
    scheduler = StepScheduler(global_batch_size=2, local_batch_size=2, ckpt_every_steps=ckpt_every, num_epochs=2,
                              dataloader=[{"x": i} for i in range(4)], save_checkpoint_every_epoch=every_epoch)
    saved = []
    for epoch in scheduler.epochs:
        scheduler.set_epoch(epoch)
        for _ in scheduler:
            if scheduler.is_ckpt_step:
                saved.append(scheduler.step)
    return saved


def test_save_checkpoint_every_epoch():
    assert _checkpoint_steps(True) == [3, 7]  # each epoch's end (4 steps an epoch), the last step among them
    assert _checkpoint_steps(False) == [7]  # the last step only
    assert _checkpoint_steps(False, ckpt_every=None) == [7]


# ------------------------------------------------------------------ a run
def _saved_for_backward(model: torch.nn.Module, batch: dict) -> int:
    """How many tensors the forward keeps for backward."""
    count = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=batch["input_ids"], use_cache=False)
    return count[0]


def test_two_step_run_from_a_nam_style_yaml(tmp_path, tiny_sft_env, tiny_model_dir, one_thread):
    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    recipe = TrainFinetuneRecipeForNextTokenPrediction(_config(tmp_path))
    recipe.setup()
    assert recipe.rng.seed == 1234
    batch = next(iter(recipe.dataloader))
    reference = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype="float32")
    # Activation checkpointing: the decoder blocks keep (almost) no activations for backward.
    assert _saved_for_backward(recipe.model, batch) < _saved_for_backward(reference, batch) / 2
    result = recipe.run_train_validation_loop()
    assert [h["step"] for h in result["history"]] == [0, 1]
    assert all(math.isfinite(h["loss"]) for h in result["history"])
    assert recipe.optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.1)  # end_wd after the 2 steps
    ckpt = tiny_sft_env["ckpt"]
    assert (ckpt / "epoch_0_step_1" / "model" / "consolidated" / "config.json").exists()  # final: consolidated
    assert [json.loads(line)["step"] for line in (ckpt / "training.jsonl").read_text().splitlines()] == [0, 1]


def test_step_scheduler_cadences_and_preemption_signal():
    import signal

    def scheduler(**kwargs: object) -> StepScheduler:
        return StepScheduler(global_batch_size=2, local_batch_size=2, max_steps=6,
                             dataloader=[{"x": i} for i in range(6)], **kwargs)

    assert scheduler().preemption_signals == [signal.SIGTERM]
    assert scheduler(preemption_signal=["SIGUSR1", "TERM"]).preemption_signals == [signal.SIGUSR1, signal.SIGTERM]
    assert scheduler(preemption_signal=None).preemption_signals == []
    with pytest.raises(ConfigError, match="step_scheduler.preemption_signal"):
        scheduler(preemption_signal="SIGKILL")
    sched = scheduler(gc_every_steps=2, log_remote_every_steps=4)
    gc_steps, remote_steps = [], []
    for _ in sched:
        gc_steps += [sched.step] if sched.is_gc_step else []
        remote_steps += [sched.step] if sched.is_remote_log_step else []
    assert gc_steps == [0, 2, 4] and remote_steps == [3, 5]  # every 4th step, and the last


def test_weight_decay_fields_checked_before_anything_loads(tmp_path, tiny_sft_env):
    with pytest.raises(ConfigError, match=r"lr_scheduler.wd_incr_style.*linear or cosine"):
        check_sft_config(_config(tmp_path, lr_scheduler__wd_incr_style="constant"))
