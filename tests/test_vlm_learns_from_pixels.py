"""The shipped tiny-VLM recipe learns from pixels: on held-out shapes it goes from chance to at least 0.9 exact
match, while the same run with every picture moved to another row (in training and in evaluation) stays within
0.1 of the best image-blind guess. Also unit tests of the two measures, ``vlm_exact_match`` and
``answer_prior_accuracy``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from nemo_like.components.eval.vlm_accuracy import answer_prior_accuracy, vlm_exact_match

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny_vlm/sft_shapes.yaml"
HELD_OUT = REPO / "data/vlm/shapes/test.jsonl"  # never seen in training, not even as validation loss
MARGIN = 0.1


def _image_parts(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for m in item["conversation"] if not isinstance(m["content"], str)
            for p in m["content"] if p.get("type") == "image"]


class ShuffledImages(torch.utils.data.Dataset):
    """The same conversations with the pictures permuted across rows (seeded, fixed): every question and answer
    is unchanged, but a picture no longer tells the answer."""

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]
        parts = [p for item in self.items for p in _image_parts(item)]
        images = [p["image"] for p in parts]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
        for part, k in zip(parts, order):
            part["image"] = images[k]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _train(ckpt: Path, shuffle_images: bool) -> tuple[Any, float]:
    """The shipped recipe trained (no checkpoints) and its held-out accuracy before training; with
    ``shuffle_images`` every dataset it builds, and the held-out split, is shuffled."""
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.vlm import finetune

    cfg = load_yaml_config(RECIPE)
    for key, value in {"checkpoint.enabled": False, "checkpoint.checkpoint_dir": str(ckpt)}.items():
        cfg.set_by_path(key, value)
    with pytest.MonkeyPatch.context() as patch:
        if shuffle_images:
            build = finetune.instantiate_dataset
            patch.setattr(finetune, "instantiate_dataset", lambda *a, **kw: ShuffledImages(build(*a, **kw)))
        recipe = finetune.FinetuneRecipeForVLM(cfg)
        recipe.setup()
    before = vlm_exact_match(recipe.model, recipe.processor, _held_out(shuffle_images))
    recipe.run_train_validation_loop()
    return recipe, before


def _held_out(shuffle_images: bool) -> Any:
    from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset

    data = VLMConversationDataset(str(HELD_OUT))
    return ShuffledImages(data) if shuffle_images else data


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """The real run and the shuffled control, each measured on the held-out split before and after training."""
    out: dict[str, Any] = {}
    for name, shuffle in (("real", False), ("control", True)):
        start = time.perf_counter()
        recipe, before = _train(tmp_path_factory.mktemp(name), shuffle)
        out[name] = {"before": before,
                     "after": vlm_exact_match(recipe.model, recipe.processor, _held_out(shuffle)),
                     "seconds": time.perf_counter() - start}
        if not shuffle:
            out["prior"] = answer_prior_accuracy(recipe.dataset, _held_out(False))
    print(out)
    return out


def test_the_recipe_goes_from_chance_to_090_held_out_accuracy(runs):
    prior, real = runs["prior"], runs["real"]
    assert prior <= 0.5, runs  # the question alone tells little: chance is low
    assert real["before"] <= prior + MARGIN, runs
    assert real["after"] >= 0.9, runs


def test_with_pictures_shuffled_across_rows_it_stays_at_the_image_blind_prior(runs):
    prior, control = runs["prior"], runs["control"]
    assert control["before"] <= prior + MARGIN, runs
    assert abs(control["after"] - prior) <= MARGIN, runs


# ---------------------------------------------------------------------------------------------- the measures


def _item(*turns: tuple[str, str], image: bool = True) -> dict[str, Any]:
    conversation = []
    for question, answer in turns:
        parts = ([{"type": "image", "image": Image.new("RGB", (64, 64), "red")}] if image else [])
        conversation += [{"role": "user", "content": parts + [{"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}]
    return {"conversation": conversation, "where": "test"}


def test_the_prior_is_the_most_frequent_training_answer_per_question():
    train = [_item(("colour?", "red")), _item(("colour?", "Red.")), _item(("colour?", "blue")),
             _item(("count?", "3"), ("colour?", "blue"))]  # every turn counts: colour red 2, blue 2 -> first seen
    held_out = [_item(("colour?", "red")), _item(("colour?", "blue")), _item(("count?", "3")),
                _item(("count?", "2"), ("shape?", "circle"))]  # only the last turn is asked; an unseen question
    assert answer_prior_accuracy(train, held_out) == 0.5
    assert answer_prior_accuracy(train, []) == 0.0


class ScriptedVLM(torch.nn.Module):
    """Writes a scripted reply to each prompt, then the end-of-turn token and a runaway continuation; keeps what
    it was given."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 pad_token_id: int, eos_token_id: list[int], **kwargs: Any) -> torch.Tensor:
        assert kwargs["do_sample"] is False and "pixel_values" in kwargs
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "training": self.training})
        rows = [self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"] + eos_token_id[:1]
                + self.tokenizer(" and more", add_special_tokens=False)["input_ids"] for _ in input_ids]
        new = torch.full((len(rows), max_new_tokens), pad_token_id)
        for r, ids in enumerate(rows):
            new[r, :len(ids[:max_new_tokens])] = torch.tensor(ids[:max_new_tokens])
        return torch.cat([input_ids, new], dim=1)


def test_exact_match_answers_the_last_turn_after_the_earlier_ones_and_normalises():
    from nemo_like._transformers.processor import load_processor
    from nemo_like._transformers.tiny_vlm import tiny_vlm_dir

    processor = load_processor(tiny_vlm_dir("idefics3"))
    rows = [_item(("What colour is the shape?", "red")),
            _item(("How many shapes are there?", "3"), ("Which shape is in the image?", "circle")),
            _item(("What colour is the shape?", "blue")),
            _item(("What colour is the shape?", "green."))]
    model = ScriptedVLM(processor.tokenizer, [" Red. ", "circle", "green", "GREEN"])
    model.train()
    assert vlm_exact_match(model, processor, rows, batch_size=3) == 0.75
    assert model.training and [len(c["input_ids"]) for c in model.calls] == [3, 1]
    assert not any(c["training"] for c in model.calls)
    first = model.calls[0]
    assert bool(first["attention_mask"][:, -1].all())  # left padding: every prompt ends in the last column
    two_turns = processor.tokenizer.decode(first["input_ids"][1][first["attention_mask"][1].bool()])
    assert two_turns.count("<|im_start|>assistant\n") == 2 and "3<|im_end|>" in two_turns
    assert two_turns.endswith("Which shape is in the image?<|im_end|>\n<|im_start|>assistant\n")
    assert "circle" not in two_turns
