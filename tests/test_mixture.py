"""Dataset mixtures: the order of Hugging Face interleave_datasets, streamed = map-style, exact resume, YAML recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import datasets
import pytest
import torch
import yaml
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import addition_rows, write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset import (
    ColumnMappedTextInstructionIterableDataset,
)
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence
from nemo_like.components.datasets.mixture import (
    IterableDatasetMixture,
    MapDatasetMixture,
    make_dataset_mixture,
    mixture_indices,
)
from nemo_like.components.datasets.utils import default_collater
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.recipes.builders.data import instantiate_dataset
from nemo_like.recipes.llm.run import main

MAPPING = {"context": "instruction", "question": "input", "answer": "response"}
INSTRUCTION = ("nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset."
               "ColumnMappedTextInstructionDataset")
STREAM = ("nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset."
          "ColumnMappedTextInstructionIterableDataset")
MIXTURE = "nemo_like.components.datasets.mixture.make_dataset_mixture"
TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def files(tmp_path) -> list[str]:
    """Three members of different sizes (and so different exhaustion points)."""
    sizes = (11, 5, 8)
    return [write_jsonl(tmp_path / f"m{i}.jsonl", addition_rows(n, offset=7 * i)) for i, n in enumerate(sizes)]


def _hf_order(lengths: list[int], probabilities: list[float] | None, strategy: str, seed: int) -> list[tuple]:
    members = [datasets.Dataset.from_dict({"m": [i] * n, "r": list(range(n))}) for i, n in enumerate(lengths)]
    mixed = datasets.interleave_datasets(members, probabilities=probabilities, seed=seed, stopping_strategy=strategy)
    return list(zip(mixed["m"], mixed["r"]))


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("probabilities", [None, [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
@pytest.mark.parametrize("lengths", [[11, 5, 8], [3, 400, 40]])
def test_order_matches_hugging_face_interleave_datasets(lengths, probabilities, strategy):
    for seed in (0, 42):
        assert mixture_indices(lengths, probabilities, strategy, seed) == _hf_order(lengths, probabilities, strategy,
                                                                                    seed)


def test_map_mixture_of_real_datasets_equals_interleaved_samples(files, tiny_tokenizer):
    members = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    mix = make_dataset_mixture(members, [0.5, 0.2, 0.3], "all_exhausted", seed=3)
    assert isinstance(mix, MapDatasetMixture)
    hf = datasets.interleave_datasets([datasets.Dataset.from_list(m.samples) for m in members],
                                      probabilities=[0.5, 0.2, 0.3], seed=3, stopping_strategy="all_exhausted")
    assert [mix[i] for i in range(len(mix))] == [dict(row) for row in hf]
    assert mix.pad_token_id == tiny_tokenizer.pad_token_id
    assert min(mix.counts) >= min(len(m) for m in members)  # all_exhausted: every member seen whole at least once


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("probabilities", [None, [0.5, 0.2, 0.3]])
def test_one_streamed_pass_equals_the_map_style_mixture(files, tiny_tokenizer, strategy, probabilities):
    maps = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    streams = [ColumnMappedTextInstructionIterableDataset(f, MAPPING, tiny_tokenizer) for f in files]
    streams[2] = maps[2]  # a map-style member inside a streamed mixture is walked row by row
    mix = make_dataset_mixture(streams, probabilities, strategy, seed=5)
    assert isinstance(mix, IterableDatasetMixture)
    want = list(make_dataset_mixture(maps, probabilities, strategy, seed=5))
    it = iter(mix)
    assert [next(it) for _ in range(len(want))] == want
    assert next(it, None) is None  # the pass ends as the strategy says (members do not repeat on their own)
    assert list(mix) == want and mix.state_dict()["pass"] == 2  # the next pass is the same data again


def test_the_same_seed_gives_the_same_order_another_seed_another():
    a = mixture_indices([30, 30], [0.5, 0.5], "first_exhausted", seed=1)
    assert a == mixture_indices([30, 30], [0.5, 0.5], "first_exhausted", seed=1)
    assert a != mixture_indices([30, 30], [0.5, 0.5], "first_exhausted", seed=2)


def _loader(mix) -> StatefulDataLoader:
    return StatefulDataLoader(mix, batch_size=3, collate_fn=lambda b: default_collater(b, pad_token_id=0))


def _batches(loader: StatefulDataLoader, n: int, it=None) -> tuple[list[dict], object]:
    """``n`` batches as a training loop takes them: a new epoch (a new iterator) when one ends."""
    out, empty = [], 0
    it = iter(loader) if it is None else it
    while len(out) < n and empty < 2:
        batch = next(it, None)
        if batch is None:
            it, empty = iter(loader), empty + 1
            continue
        out.append(batch)
        empty = 0
    return out, it


@pytest.mark.parametrize("k, from_end", [(1, False), (4, False), (-1, True), (0, True), (2, True)])
def test_streamed_mixture_resumes_at_the_next_batch(files, tiny_tokenizer, k, from_end):
    """Resume after ``k`` batches (counted from the end of the first pass with ``from_end``)."""
    def build():
        streams = [ColumnMappedTextInstructionIterableDataset(f, MAPPING, tiny_tokenizer) for f in files]
        return make_dataset_mixture(streams, [0.5, 0.2, 0.3], "all_exhausted", seed=11)

    per_pass = len(list(_loader(build())))
    k = per_pass + k if from_end else k
    loader = _loader(build())
    _, it = _batches(loader, k)
    state = loader.state_dict()
    expected, _ = _batches(loader, per_pass, it)  # on into the next pass
    resumed = _loader(build())
    resumed.load_state_dict(state)
    got, _ = _batches(resumed, per_pass)
    assert len(got) == len(expected) == per_pass
    for a, b in zip(expected, got):
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda ds: make_dataset_mixture(ds, [0.5, 0.6, 0.1]), r"^dataset\.mixture_proportion: .* sum to 1\.2, not 1$"),
        (lambda ds: make_dataset_mixture(ds, [0.5, 0.5]), r"^dataset\.mixture_proportion: 2 proportions for 3"),
        (lambda ds: make_dataset_mixture(ds, [0.5, 0.5, 0.0], "all_exhausted"), r"datasets \[2\] have proportion 0"),
        (lambda ds: make_dataset_mixture(ds, None, "longest"), r"^dataset\.mixture_strategy: 'longest' is not one"),
        (lambda ds: make_dataset_mixture(ds, [0.5, -0.5, 1.0]), r"^dataset\.datasets\.1\.mixture_proportion"),
    ],
    ids=["sum", "count", "zero-all-exhausted", "strategy", "negative"],
)
def test_bad_mixture_settings_are_one_line_errors(files, tiny_tokenizer, make, pattern):
    members = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    with pytest.raises(ValueError, match=pattern) as err:
        make(members)
    assert "\n" not in str(err.value)


def _section(files: list[str], target: str = INSTRUCTION, proportions=(0.5, 0.2, 0.3), **extra) -> dict:
    members = [{"_target_": target, "path_or_dataset_id": f, "column_mapping": MAPPING} for f in files]
    for member, p in zip(members, proportions):
        if p is not None:
            member["mixture_proportion"] = p
    return {"_target_": MIXTURE, "mixture_strategy": "first_exhausted", "seed": 7, "datasets": members, **extra}


def test_yaml_section_builds_members_with_the_tokenizer_and_their_proportions(files, tiny_tokenizer):
    mix = instantiate_dataset(ConfigNode(_section(files), path="dataset"), tokenizer=tiny_tokenizer)
    members = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    assert list(mix) == list(make_dataset_mixture(members, [0.5, 0.2, 0.3], "first_exhausted", seed=7))
    with pytest.raises(ConfigError, match=r"^dataset\.datasets\.1\.mixture_proportion: missing"):
        instantiate_dataset(ConfigNode(_section(files, proportions=(0.5, None, 0.5)), path="dataset"),
                            tokenizer=tiny_tokenizer)


def test_packing_a_mixture_names_the_members_row(files, tiny_tokenizer):
    members = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    mix = make_dataset_mixture(members, None, "first_exhausted")
    with pytest.raises(DatasetError, match=r"m0\.jsonl:1: \d+ tokens exceed packed_sequence_size 8"):
        PackedSequence(mix, 8)


def _yaml_args(tmp_path: Path, section: dict, *extra: str) -> list[str]:
    config = tmp_path / "mixture.yaml"
    base = yaml.safe_load(Path(TINY).read_text())
    base["dataset"] = section
    config.write_text(yaml.safe_dump(base))
    return ["--config", str(config), "--step_scheduler.val_every_steps", "none", *extra]


@pytest.mark.parametrize("streamed", [False, True], ids=["map", "streamed"])
def test_recipe_trains_on_a_mixture_section_in_mixture_order(files, tmp_path, tiny_model_dir, tiny_tokenizer,
                                                             addition_data, streamed):
    section = _section(files, target=STREAM if streamed else INSTRUCTION)
    ckpt = tmp_path / "ckpt"
    env = {"TEST_MODEL_DIR": tiny_model_dir, "TEST_TRAIN_JSONL": addition_data["train"],
           "TEST_VAL_JSONL": addition_data["validation"], "TEST_CKPT_DIR": str(ckpt)}
    with mock.patch.dict(os.environ, env):
        assert main(_yaml_args(tmp_path, section, "--step_scheduler.max_steps", "5")) == 0
    records = [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]
    members = [ColumnMappedTextInstructionDataset(f, MAPPING, tiny_tokenizer) for f in files]
    order = list(make_dataset_mixture(members, [0.5, 0.2, 0.3], "first_exhausted", seed=7))
    per_step = [order[i : i + 4] for i in range(0, len(order), 4)]  # global batch 4, no shuffling
    labels = [sum(sum(1 for t in s["labels"] if t != -100) for s in step) for step in per_step]
    steps_per_epoch = len(per_step)
    want = [(i // steps_per_epoch, labels[i % steps_per_epoch]) for i in range(5)]
    assert [(r["epoch"], r["num_label_tokens"]) for r in records] == want
