"""FusedLinearCrossEntropy: same loss and gradients as the output layer + MaskedCrossEntropy, far less memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO
from nemo_like.components.loss.linear_ce import FusedLinearCrossEntropy
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy


def _case(vocab: int = 211, hidden: int = 24, seed: int = 0, bias: bool = False):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 41, hidden, generator=gen, requires_grad=True)
    w = (0.3 * torch.randn(vocab, hidden, generator=gen)).requires_grad_()
    b = torch.randn(vocab, generator=gen).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (3, 41), generator=gen)
    labels[:, :25] = -100  # a prompt without loss
    labels[1, 30:] = -100  # and some padding
    return h, w, b, labels


def _reference(h, w, b, labels, softcap: float = 0.0, **kwargs):
    logits = torch.nn.functional.linear(h, w, b)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return MaskedCrossEntropy()(logits, labels, **kwargs)


@pytest.mark.parametrize(
    "options",
    [{}, {"chunk_size": 5}, {"chunk_size": 7, "only_labelled": False}, {"chunk_size": 3, "bias": True},
     {"chunk_size": 4, "logit_softcapping": 2.0}],
    ids=["default", "chunks", "all-positions", "bias", "softcap"],
)
def test_loss_and_gradients_equal_masked_cross_entropy(options):
    options = dict(options)
    h, w, b, labels = _case(bias=options.pop("bias", False))
    params = [h, w] + ([b] if b is not None else [])
    count = (labels != -100).sum()
    ours = FusedLinearCrossEntropy(**options)(h, labels, w, num_label_tokens=count, lm_bias=b)
    ref = _reference(h, w, b, labels, softcap=options.get("logit_softcapping", 0.0), num_label_tokens=count)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours, ref)
    for got, want in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_reductions_and_no_grad_match():
    h, w, _, labels = _case(seed=1)
    with torch.no_grad():
        assert torch.allclose(FusedLinearCrossEntropy()(h, labels, w), _reference(h, w, None, labels), atol=1e-4)
        mean = FusedLinearCrossEntropy(reduction="mean")(h, labels, w)
        assert torch.allclose(mean, MaskedCrossEntropy(reduction="mean")(h @ w.T, labels), atol=1e-5)


def test_bf16_autocast_matches_the_autocast_output_layer():
    """Under autocast the product runs in bf16 and the softmax in fp32, exactly like lm_head + MaskedCrossEntropy."""
    h, w, _, labels = _case(seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FusedLinearCrossEntropy()(h, labels, w)
        logits = torch.nn.functional.linear(h, w)
    ref = MaskedCrossEntropy()(logits, labels)
    assert torch.allclose(ours, ref, rtol=1e-4), (ours, ref)
    (g_ours,) = torch.autograd.grad(ours, h)
    (g_ref,) = torch.autograd.grad(ref, h)
    assert (g_ours - g_ref).abs().max() < 0.02 * g_ref.abs().max()


def test_no_labelled_position_gives_a_differentiable_zero():
    h, w, _, labels = _case()
    loss = FusedLinearCrossEntropy()(h, torch.full_like(labels, -100), w, num_label_tokens=1)
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum().item() == 0.0


def test_bad_shapes_and_options_name_the_culprit():
    h, w, _, labels = _case()
    with pytest.raises(ValueError, match="labels of shape"):
        FusedLinearCrossEntropy()(h, labels[:, :-1], w)
    with pytest.raises(ValueError, match="lm_weight of shape"):
        FusedLinearCrossEntropy()(h, labels, w[:, :-1])
    with pytest.raises(ValueError, match="loss_fn.chunk_size"):
        FusedLinearCrossEntropy(chunk_size=0)
    with pytest.raises(ValueError, match="loss_fn.reduction"):
        FusedLinearCrossEntropy(reduction="none")


_PEAK_SCRIPT = textwrap.dedent('''
    import json, re, sys, torch
    def status(key):  # kiB, from the kernel's own accounting of this process
        return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))
    from nemo_like.components.loss.linear_ce import FusedLinearCrossEntropy
    from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
    torch.manual_seed(0)
    tokens, hidden, vocab = 1024, 576, 49152
    h = torch.randn(1, tokens, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden) * 0.02          # a frozen output layer, as under LoRA
    labels = torch.randint(0, vocab, (1, tokens))  # every position labelled: the worst case for selection
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak: imports and set-up do not count
    before = status("VmRSS")
    if sys.argv[1] == "linear":
        loss = FusedLinearCrossEntropy()(h, labels, w, num_label_tokens=tokens)
    else:
        loss = MaskedCrossEntropy()(h @ w.T, labels, num_label_tokens=tokens)
    loss.backward()
    grow = status("VmHWM") - before
    print(json.dumps({"loss": loss.item(), "grad": h.grad.abs().sum().item(), "peak_growth_kib": grow}))
''')


def _loss_step_peak(kind: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loss_step_peak_memory_is_less_than_half_at_vocab_49152_seq_1024():
    """Peak resident growth of forward + backward of the loss step (output layer included), each in a fresh process."""
    linear, masked = _loss_step_peak("linear"), _loss_step_peak("masked")
    assert abs(linear["loss"] - masked["loss"]) < 1e-4 and abs(linear["grad"] / masked["grad"] - 1) < 1e-4
    full_logits_kib = 1024 * 49152 * 4 // 1024
    assert masked["peak_growth_kib"] >= full_logits_kib  # the reference really holds full logits
    assert linear["peak_growth_kib"] <= 0.5 * masked["peak_growth_kib"], (linear, masked)


# ---------------------------------------------------------------- in the recipe
_LINEAR = "nemo_like.components.loss.linear_ce.FusedLinearCrossEntropy"
_MASKED = "nemo_like.components.loss.masked_ce.MaskedCrossEntropy"


@pytest.fixture()
def recipe_env(tiny_sft_env):
    return tiny_sft_env


def _run_recipe(loss_target: str, local: int = 4, global_: int = 4, steps: int = 4, **overrides) -> dict:
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(REPO / "tests" / "configs" / "tiny_sft.yaml")
    settings = {"step_scheduler.local_batch_size": local, "step_scheduler.global_batch_size": global_,
                "step_scheduler.max_steps": steps, "step_scheduler.val_every_steps": steps,
                "checkpoint.enabled": False, "loss_fn._target_": loss_target, **overrides}
    for key, value in settings.items():
        cfg.set_by_path(key, value)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    result = recipe.run_train_validation_loop()
    return {"losses": [h["loss"] for h in result["history"]], "val_loss": result["val_loss"]}


def _plain_loop_losses(model_dir: str, train: str, tokenizer, batch: int, steps: int) -> list[float]:
    """Reference: the model's own logits, mean CE over label tokens, AdamW, whole batch at once."""
    from transformers import AutoModelForCausalLM

    from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
        ColumnMappedTextInstructionDataset,
    )
    from nemo_like.components.datasets.utils import default_collater

    mapping = {"context": "instruction", "question": "input", "answer": "response"}
    ds = ColumnMappedTextInstructionDataset(train, mapping, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        b = default_collater([ds[i] for i in range(step * batch, (step + 1) * batch)], pad_token_id=tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_recipe_with_linear_ce_matches_masked_ce_and_a_plain_loop(recipe_env, tiny_model_dir, tiny_tokenizer):
    """Full fine-tuning (the output layer trains too), with and without gradient accumulation."""
    ref = _plain_loop_losses(tiny_model_dir, recipe_env["train"], tiny_tokenizer, batch=4, steps=4)
    masked = _run_recipe(_MASKED)
    whole = _run_recipe(_LINEAR)
    accumulated = _run_recipe(_LINEAR, local=1)
    assert ref[-1] < ref[0]
    assert max(abs(a - b) for a, b in zip(whole["losses"], ref)) < 1e-5, (whole, ref)
    assert max(abs(a - b) for a, b in zip(accumulated["losses"], whole["losses"])) < 1e-5, (accumulated, whole)
    assert abs(whole["val_loss"] - masked["val_loss"]) < 1e-5, (whole, masked)


def test_recipe_with_linear_ce_under_lora_and_packing_matches_masked_ce(recipe_env):
    lora = {"peft._target_": "nemo_like.components._peft.lora.PeftConfig", "peft.match_all_linear": True,
            "peft.dim": 4, "peft.alpha": 8, "packed_sequence.packed_sequence_size": 96}
    masked = _run_recipe(_MASKED, local=1, global_=2, steps=3, **lora)
    linear = _run_recipe(_LINEAR, local=1, global_=2, steps=3, **lora)
    assert max(abs(a - b) for a, b in zip(linear["losses"], masked["losses"])) < 1e-5, (linear, masked)
    assert abs(linear["val_loss"] - masked["val_loss"]) < 1e-5


def test_recipe_refuses_linear_ce_when_the_output_layer_carries_an_adapter(recipe_env):
    from nemo_like.config.loader import ConfigError

    with pytest.raises(ConfigError, match="loss_fn: FusedLinearCrossEntropy needs a plain linear output layer"):
        _run_recipe(_LINEAR, steps=1, **{"peft._target_": "nemo_like.components._peft.lora.PeftConfig",
                                        "peft.target_modules": ["lm_head", "*q_proj"]})


def test_activation_checkpointing_keeps_the_losses(recipe_env):
    """distributed_config.activation_checkpointing recomputes instead of storing, also in one process; same numbers."""
    lora = {"peft._target_": "nemo_like.components._peft.lora.PeftConfig", "peft.match_all_linear": True,
            "peft.dim": 4, "peft.alpha": 8}
    plain = _run_recipe(_LINEAR, steps=3, **lora)
    checkpointed = _run_recipe(_LINEAR, steps=3, **lora, **{"distributed_config._target_": "nemo_like.components.distributed.config.FSDP2Config",
                                                        "distributed_config.activation_checkpointing": True})
    assert max(abs(a - b) for a, b in zip(plain["losses"], checkpointed["losses"])) < 1e-6, (plain, checkpointed)


@pytest.mark.slow
def test_linear_ce_under_fsdp2_on_two_ranks_gives_the_single_process_losses(recipe_env, tmp_path):
    """FSDP2 shards the output layer; the loss gathers it whole and the numbers stay those of one process."""
    single = _run_recipe(_MASKED, local=4, global_=4, steps=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "examples/llm_finetune/finetune.py",
           "--config", str(REPO / "tests" / "configs" / "tiny_sft.yaml"), "--step_scheduler.local_batch_size", "2",
           "--step_scheduler.global_batch_size", "4", "--step_scheduler.max_steps", "3",
           "--step_scheduler.val_every_steps", "3", "--loss_fn._target_", _LINEAR,
           "--checkpoint.checkpoint_dir", str(tmp_path / "fsdp")]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "training.jsonl").read_text().splitlines()]
    assert max(abs(r["loss"] - s) for r, s in zip(rows, single["losses"])) < 1e-5, (rows, single)
