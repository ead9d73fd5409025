"""A new training method is one small class on the recipe base: this file writes one (a linear probe on
a frozen random feature map) and shows that it gets checkpoints, an exact resume after a real SIGKILL,
callbacks and trackers with no other code."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchdata.stateful_dataloader import StatefulDataLoader

from crash_hooks import killed_after_step
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.loader import ConfigNode
from nemo_like.config.typed_sections import RecipeSchema, check_recipe
from nemo_like.recipes.base import BaseRecipe
from nemo_like.recipes.llm.sft_config import SFT_SCHEMA

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# The method's sections: the shared typed ones, plus its model and optimizer.
PROBE_SCHEMA = RecipeSchema(name="probe", built=frozenset({"model", "optimizer", "rng"}),
                            required=frozenset({"model", "optimizer", "step_scheduler"}), typed=SFT_SCHEMA.typed,
                            scalars=SFT_SCHEMA.scalars, open=frozenset({"tensorboard", "wandb", "mlflow"}),
                            lists=frozenset({"callbacks"}), defaulted=SFT_SCHEMA.defaulted)


class LinearProbe(BaseRecipe):
    """Fits a linear head on a fixed random feature map of synthetic data (mean squared error)."""

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg, SimpleNamespace(**check_recipe(cfg, PROBE_SCHEMA)))

    def setup(self) -> None:
        self.setup_run()
        g = torch.Generator().manual_seed(0)
        x, features = torch.randn(48, 8, generator=g), torch.randn(8, 16, generator=g)
        rows = [{"x": torch.tanh(a @ features), "y": a.sum()} for a in x]
        batch = self.sections.step_scheduler.local_batch_size
        self.dataloader = StatefulDataLoader(rows[:40], batch_size=batch, shuffle=True)
        self.val_dataloader = StatefulDataLoader(rows[40:], batch_size=batch)
        self.step_scheduler = StepScheduler(**vars(self.sections.step_scheduler), dataloader=self.dataloader)
        self.model = self.cfg.model.instantiate()
        self.optimizer = self.cfg.optimizer.instantiate(params=self.model.parameters())
        self.setup_observers()

    def _sse(self, batch: dict) -> torch.Tensor:
        return F.mse_loss(self.model(batch["x"]).squeeze(-1), batch["y"], reduction="sum")

    def _run_train_optim_step(self, batches: list[dict]) -> dict:
        self.optimizer.zero_grad()
        loss = sum(self._sse(b) for b in batches) / sum(len(b["y"]) for b in batches)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def _run_validation_epoch(self) -> float:
        return sum(self._sse(b).item() for b in self.val_dataloader) / 8


def probe_config(ckpt: Path) -> ConfigNode:
    return ConfigNode({
        "model": {"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 1},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.05},
        "rng": {"_target_": "nemo_like.components.training.rng.StatefulRNG", "seed": 3},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 12, "ckpt_every_steps": 3,
                           "val_every_steps": 4},
        "checkpoint": {"checkpoint_dir": str(ckpt), "save_consolidated": False},
        "tensorboard": {"log_dir": str(ckpt / "tb")},
        "callbacks": [{"_target_": "nemo_like.components.callbacks.EarlyStopping", "monitor": "val_loss",
                       "patience": 50}],
    })


def run_probe(ckpt: Path) -> dict:
    recipe = LinearProbe(probe_config(ckpt))
    recipe.setup()
    return recipe.run_train_validation_loop()


def records(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]


def test_a_small_method_gets_the_whole_run_from_the_base(tmp_path):
    reference = tmp_path / "reference"
    result = run_probe(reference)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 12 and losses[-1] < losses[0] / 2  # it learns
    assert (reference / "LATEST").read_text() == "epoch_2_step_11"  # 5 steps an epoch, checkpoints every 3
    assert len((reference / "validation.jsonl").read_text().splitlines()) >= 3
    assert list((reference / "tb").rglob("events.out.tfevents.*"))  # the tracker wrote its events

    # A real SIGKILL right after step 5's checkpoint, then the same call resumes it exactly.
    killed = tmp_path / "killed"
    assert killed_after_step(5, lambda: run_probe(killed)) == signal.SIGKILL
    assert (killed / "LATEST").read_text() == "epoch_1_step_5"
    run_probe(killed)
    assert [r["loss"] for r in records(killed)] == [r["loss"] for r in records(reference)]
    ref = load_file(str(reference / "epoch_2_step_11" / "model" / "model.safetensors"))
    got = load_file(str(killed / "epoch_2_step_11" / "model" / "model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_the_loss_plot_and_the_evaluations_after_training_are_callbacks_the_base_adds(tmp_path):
    """The method writes nothing for them: the loss plot (and the held-out and lm-eval scores, from their
    sections) come as callbacks ahead of the listed ones, and only a run that finished gets them."""
    finished = LinearProbe(probe_config(tmp_path / "finished"))
    finished.setup()
    assert [type(cb).__name__ for cb in finished.callbacks] == ["LossPlot", "ProgressBar", "EarlyStopping"]
    finished.run_train_validation_loop()
    curves = json.loads((tmp_path / "finished" / "loss_curves.json").read_text())
    assert [step for step, _ in curves["train_loss"]] == list(range(12))

    class Preempted(LinearProbe):
        def _run_train_optim_step(self, batches: list[dict]) -> dict:
            if self.step_scheduler.step == 2:
                self.step_scheduler.sigterm = True  # what the SIGTERM handler sets
            return super()._run_train_optim_step(batches)

    preempted = Preempted(probe_config(tmp_path / "preempted"))
    preempted.setup()
    assert len(preempted.run_train_validation_loop()["history"]) == 3
    assert (tmp_path / "preempted" / "training.jsonl").is_file()
    assert not (tmp_path / "preempted" / "loss_curves.json").exists()  # no plot on the way out of a preempted run
