"""group_by_length: similar lengths batched together, a new order each epoch, exact resume, recipe wiring."""

from __future__ import annotations

import random
from pathlib import Path

from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import addition_rows, write_jsonl
from nemo_like.components.datasets.length_grouped_sampler import LengthGroupedSampler
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 300) for _ in range(200)]


def _padding(order: list[int], batch: int) -> int:
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_batches_hold_similar_lengths_and_each_epoch_reorders():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=4, seed=3, mega_batch_mult=10)
    first, second = list(sampler), list(sampler)  # the second pass is the next epoch
    assert sorted(first) == sorted(second) == list(range(200)) and first != second
    shuffled = list(range(200))
    random.Random(1).shuffle(shuffled)
    assert _padding(first, 4) < _padding(shuffled, 4) / 4
    for start in range(0, 200, 40):  # each mega-batch is sorted, longest first
        group = [LENGTHS[i] for i in first[start : start + 40]]
        assert group == sorted(group, reverse=True)


def test_resume_after_k_batches_gives_the_same_next_batches():
    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(list(range(200)), batch_size=4, sampler=LengthGroupedSampler(LENGTHS, 4, seed=5))

    run = loader()
    it = iter(run)
    for _ in range(7):
        next(it)
    state = run.state_dict()
    expected = [next(it).tolist() for _ in range(5)]
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.tolist() for _, b in zip(range(5), resumed)] == expected


def test_recipe_uses_the_sampler_for_training_only(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_JSONL", write_jsonl(tmp_path / "train.jsonl", addition_rows(16)))
    monkeypatch.setenv("TEST_VAL_JSONL", write_jsonl(tmp_path / "val.jsonl", addition_rows(4, offset=2)))
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    cfg = load_yaml_config(Path(__file__).parent / "configs" / "tiny_sft.yaml")
    cfg.set_by_path("dataloader.group_by_length", True)
    cfg.set_by_path("step_scheduler.max_steps", 2)
    cfg.set_by_path("checkpoint.enabled", False)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    assert isinstance(recipe.dataloader.sampler, LengthGroupedSampler)
    assert not isinstance(recipe.val_dataloader.sampler, LengthGroupedSampler)
    assert len(recipe.run_train_validation_loop()["history"]) == 2
