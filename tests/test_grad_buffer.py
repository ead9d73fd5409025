"""Contiguous gradients: the same training numbers bit for bit, one buffer, zeroed in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemo_like.components.training.grad_buffer import ContiguousGrads
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction
from test_train_ft import TINY, env  # noqa: F401  (fixture)


def test_grads_are_views_of_one_buffer_and_survive_zeroing() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)
    grads = ContiguousGrads(model.parameters())
    assert grads.buffer.numel() == 12 + 6 + 2
    model(torch.randn(5, 4)).sum().backward()
    assert all(p.grad.untyped_storage().data_ptr() == grads.buffer.untyped_storage().data_ptr() for p in grads.params)
    assert grads.buffer.abs().sum() > 0 and model[0].bias.grad is None
    grads.zero_()
    assert grads.buffer.abs().sum() == 0
    model[1].weight.grad = None  # e.g. an optimizer.zero_grad() elsewhere: the views come back
    grads.zero_()
    assert model[1].weight.grad is not None and model[1].weight.grad.data_ptr() != 0


def test_mixed_dtypes_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).to(torch.float64))
    with pytest.raises(ValueError, match="contiguous_grads"):
        ContiguousGrads(model.parameters())


def _losses(contiguous: bool) -> tuple[list[float], list[float]]:
    cfg = load_yaml_config(TINY)
    cfg.set_by_path("step_scheduler.local_batch_size", 1)  # 4 micro-batches accumulate into each step
    cfg.set_by_path("step_scheduler.max_steps", 4)
    cfg.set_by_path("step_scheduler.val_every_steps", None)
    cfg.set_by_path("checkpoint.enabled", False)
    cfg.set_by_path("clip_grad_norm", {"max_norm": 1.0})
    cfg.set_by_path("contiguous_grads", contiguous)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    assert (recipe.grad_buffer is not None) == contiguous
    history = recipe.run_train_validation_loop()["history"]
    return [h["loss"] for h in history], [h["grad_norm"] for h in history]


def test_recipe_losses_and_grad_norms_are_identical(env) -> None:  # noqa: F811
    assert _losses(True) == _losses(False)
