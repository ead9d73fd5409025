"""The batch contract: every batch key has a consumer (the model or the method), one IGNORE_INDEX,
``loss_mask`` read rather than dropped. Run on the real SFT recipe with the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import tiny_llama_config
from nemo_like.components.batch import IGNORE_INDEX, ignore_index_of, model_batch_keys, split_batch
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.config.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_model_declares_what_it_takes():
    model = LlamaForCausalLM(tiny_llama_config(64))
    keys = model_batch_keys(model)
    assert {"input_ids", "attention_mask", "position_ids"} <= keys
    assert "labels" not in keys  # the method computes the loss
    assert model_batch_keys(torch.compile(model)) == keys  # a wrapper's (*args, **kwargs) is looked through
    model.batch_keys = ("input_ids", "pixel_values")  # an explicit declaration wins
    assert model_batch_keys(model) == {"input_ids", "pixel_values"}


def test_a_key_without_consumer_is_an_error_naming_it():
    keys = model_batch_keys(LlamaForCausalLM(tiny_llama_config(64)))
    batch = {"input_ids": torch.ones(1, 3), "labels": torch.ones(1, 3), "pixel_values": torch.ones(1, 3)}
    with pytest.raises(DatasetError, match="'pixel_values': no consumer; LlamaForCausalLM takes .*input_ids"):
        split_batch(batch, keys, ("labels",), "LlamaForCausalLM")
    inputs, own = split_batch({k: batch[k] for k in ("input_ids", "labels")}, keys, ("labels",))
    assert set(inputs) == {"input_ids"} and set(own) == {"labels"}


def test_one_ignore_index_taken_from_the_loss():
    assert ignore_index_of(MaskedCrossEntropy()) == IGNORE_INDEX == -100
    assert ignore_index_of(lambda logits, labels: logits.sum()) == IGNORE_INDEX  # a loss without one
    with pytest.raises(ConfigError, match="loss_fn.ignore_index: -1"):
        ignore_index_of(MaskedCrossEntropy(ignore_index=-1))


@pytest.fixture()
def recipe(tiny_sft_env, one_thread):
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(REPO / "tests" / "configs" / "tiny_sft.yaml")
    cfg.set_by_path("checkpoint.enabled", False)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    return recipe


def test_the_sft_recipe_refuses_an_unread_field_and_reads_loss_mask(recipe):
    batch = next(iter(recipe.val_dataloader))
    with pytest.raises(DatasetError, match="'pixel_values': no consumer"):
        recipe._inputs_and_labels({**batch, "pixel_values": torch.zeros(batch["input_ids"].shape[0], 3, 4, 4)})

    # loss_mask is the method's: a masked position loses its label, exactly as if the dataset had written -100.
    labels = batch["labels"]
    loss_mask = torch.ones_like(labels)
    loss_mask[:, labels.shape[1] // 2 :] = 0  # answers sit in the second half
    inputs, masked = recipe._inputs_and_labels({**batch, "loss_mask": loss_mask})
    expected = labels.masked_fill(loss_mask == 0, IGNORE_INDEX)
    assert torch.equal(masked, expected) and (masked != IGNORE_INDEX).sum() < (labels != IGNORE_INDEX).sum()
    assert "loss_mask" not in inputs
    with torch.no_grad():
        via_mask = recipe._forward_loss(recipe._model_inputs(inputs), masked)
        via_labels = recipe._forward_loss(recipe._model_inputs(inputs), expected)
    assert torch.equal(via_mask, via_labels)
