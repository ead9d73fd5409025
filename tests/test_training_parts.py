"""Step scheduler, LR schedule, loss, collater and RNG against their documented semantics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nemo_like.components.datasets.utils import default_collater
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.optim.scheduler import build_lr_scheduler
from nemo_like.components.training.rng import StatefulRNG
from nemo_like.components.training.step_scheduler import StepScheduler


def _run(sched: StepScheduler) -> list[tuple[int, int, int, bool, bool]]:
    seen = []
    for epoch in sched.epochs:
        sched.set_epoch(epoch)
        for batches in sched:
            seen.append((epoch, sched.step, len(batches), sched.is_val_step, sched.is_ckpt_step))
    return seen


def test_step_scheduler_grad_accumulation_epochs_and_defaults():
    sched = StepScheduler(global_batch_size=8, local_batch_size=2, dataloader=list(range(10)), num_epochs=2)
    assert sched.grad_acc_steps == 4
    assert sched.epoch_len == 3 and sched.max_steps == 6 and sched.ckpt_every_steps == 3
    seen = _run(sched)
    assert [s[1] for s in seen] == [0, 1, 2, 3, 4, 5]
    assert [s[2] for s in seen] == [4, 4, 2, 4, 4, 2]  # the short tail group of each epoch is a step too
    assert [s[0] for s in seen] == [0, 0, 0, 1, 1, 1]
    assert [s[4] for s in seen] == [False, False, True, False, False, True]


def test_step_scheduler_max_steps_and_val_ckpt_rules():
    sched = StepScheduler(global_batch_size=1, local_batch_size=1, dataloader=list(range(100)),
                          max_steps=10, val_every_steps=4, ckpt_every_steps=5)
    seen = _run(sched)
    assert len(seen) == 10 and seen[-1][1] == 9
    ckpt = [s[1] for s in seen if s[4]]
    val = [s[1] for s in seen if s[3]]
    assert ckpt == [4, 9]
    assert val == [3, 4, 7, 9]
    assert sched.state_dict() == {"step": 10, "epoch": 1}


def test_step_scheduler_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="global_batch_size"):
        StepScheduler(global_batch_size=10, local_batch_size=4, dataloader=[1])


def _lrs(style: str, steps: int = 20, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, steps, lr_decay_style=style, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        sched.step(1)
    return out


def test_lr_defaults_warmup_cosine_min_lr():
    lrs = _lrs("cosine", steps=100)
    assert lrs[0] == pytest.approx(0.1)  # init lr = 10% of base
    assert lrs[10] == pytest.approx(1.0)  # warmup = 10% of steps
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)
    mid = 10 + 45
    assert lrs[mid] == pytest.approx(0.01 + 0.99 * 0.5 * (math.cos(math.pi * 0.5) + 1))
    assert min(lrs) >= 0.01 - 1e-12


@pytest.mark.parametrize("style", ["constant", "linear", "cosine", "inverse-square-root", "WSD"])
def test_lr_styles_are_monotone_after_warmup(style):
    lrs = _lrs(style, steps=50, lr_warmup_steps=5, min_lr=0.0)
    after = lrs[5:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    if style == "constant":
        assert set(after) == {1.0}
    if style == "WSD":
        assert after[:30] == [1.0] * 30 and after[-1] < 1.0


def test_lr_unknown_field_names_itself():
    with pytest.raises(ValueError, match="lr_wrmup_steps"):
        _lrs("cosine", lr_wrmup_steps=3)


def test_masked_ce_sum_over_global_tokens_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = -100
    n = int((labels != -100).sum())
    loss = MaskedCrossEntropy()(logits, labels, num_label_tokens=n)
    ref = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert torch.allclose(loss, ref, atol=1e-7)
    half = MaskedCrossEntropy()(logits[:1], labels[:1], num_label_tokens=n) + MaskedCrossEntropy()(
        logits[1:], labels[1:], num_label_tokens=n
    )
    assert torch.allclose(half, ref, atol=1e-7)  # micro-batch sums add up to the global mean


def test_masked_ce_upcasts_bf16():
    logits = torch.randn(1, 4, 7).bfloat16()
    labels = torch.tensor([[1, 2, -100, 3]])
    assert MaskedCrossEntropy()(logits, labels).dtype == torch.float32


def test_default_collater_pads_each_field():
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [9], "attention_mask": [1]},
    ]
    out = default_collater(batch, pad_token_id=2)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert out["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert default_collater(batch, pad_seq_len_divisible=8)["input_ids"].shape == (2, 8)


def test_stateful_rng_round_trip_is_loadable_without_pickle(tmp_path):
    rng = StatefulRNG(seed=7)
    state = rng.state_dict()
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_one_dtype_reading_for_every_section():
    """bf16 / bfloat16 / torch.bfloat16 mean the same in the model, LoRA, QLoRA, FSDP2 and autocast sections."""
    from nemo_like._transformers.auto_model import resolve_dtype
    from nemo_like.components._peft.lora import PeftConfig
    from nemo_like.components.distributed.config import FSDP2Config
    from nemo_like.components.dtypes import parse_dtype
    from nemo_like.components.quantization.qlora import create_bnb_config
    from nemo_like.config.errors import ConfigError

    for spelling in ("bf16", "BFloat16", "torch.bfloat16", torch.bfloat16):
        assert parse_dtype(spelling, "k") is torch.bfloat16
        assert resolve_dtype(spelling) is torch.bfloat16
        assert PeftConfig(lora_dtype=spelling).lora_dtype is torch.bfloat16
        assert FSDP2Config(mp_param_dtype=spelling).mixed_precision().param_dtype is torch.bfloat16
        assert create_bnb_config({"load_in_4bit": True, "bnb_4bit_compute_dtype": spelling}).bnb_4bit_compute_dtype \
            is torch.bfloat16
    assert parse_dtype(None, "k") is None and parse_dtype("none", "k") is None and resolve_dtype(None) == "auto"
    with pytest.raises(ConfigError, match="^autocast.dtype: 'float8' is not a dtype; use one of float32, bfloat16"):
        parse_dtype("float8", "autocast.dtype")
    with pytest.raises(ConfigError, match="k: None is not a dtype"):
        parse_dtype(None, "k", optional=False)
