"""Regressions: shuffled loaders on two data-parallel ranks, run length from max_steps / num_epochs, losses of
steps without label tokens, and one-line errors for step_scheduler values."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nemo_like.components.distributed.fork_launcher import run_on_ranks
from nemo_like.components.loss.linear_ce import FusedLinearCrossEntropy
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.loader import ConfigError, ConfigNode, load_yaml_config
from nemo_like.recipes.builders.data import build_dataloader

REPO = Path(__file__).resolve().parents[1]
ROWS = 40


def _shuffled_recipes() -> list[str]:
    """The shipped recipes whose dataloader section shuffles."""
    found = []
    for path in sorted(glob.glob(str(REPO / "recipes" / "**" / "*.yaml"), recursive=True)):
        loader = load_yaml_config(path).get("dataloader")
        if loader is not None and loader.get("shuffle"):
            found.append(path)
    return found


def _rows() -> list[dict[str, list[int]]]:
    """Samples whose first input id is their index, so a batch says which samples it holds."""
    return [{"input_ids": [i, i, i, i], "labels": [i, i, i, i], "attention_mask": [1, 1, 1, 1]} for i in range(ROWS)]


def _pairs() -> list[dict[str, list[int]]]:
    return [{"prompt_ids": [i, i], "chosen_ids": [i], "rejected_ids": [i, i]} for i in range(ROWS)]


def _orders_on_two_ranks(recipes: list[str], tokenizer) -> dict[str, list[list[int]]]:
    """On one of two forked ranks: each recipe's dataloader section over the samples, two epochs, sample order."""
    from nemo_like.components.datasets.llm.packed_sequence import PackedSequence
    from nemo_like.components.datasets.llm.preference_collater import pairs_in_batch
    from nemo_like.components.distributed.init import initialize_distributed

    dist = initialize_distributed("gloo")
    assert dist.dp_size == 2
    orders = {}
    for path in recipes:
        cfg = load_yaml_config(path)
        local = int(cfg.get("step_scheduler").get("local_batch_size"))
        collate = str(cfg.get("dataloader").get("collate_fn"))
        packed = "packed_sequence_collater" in collate
        pairs = "preference_collater" in collate  # a preference recipe: sample i is a pair whose prompt starts with i
        # A pack of 4 tokens holds exactly one 4-token sample: pack i is sample i.
        dataset = PackedSequence(_rows(), packed_sequence_size=4) if packed else _pairs() if pairs else _rows()
        section = cfg.get("dataloader")
        if "datasets.vlm" in collate:  # image-text rows need a processor; the sampler is what is checked here
            section = ConfigNode({**section.to_dict(), "collate_fn": "nemo_like.components.datasets.utils.default_collater"},
                                 path="dataloader")
        loader = build_dataloader(section, dataset, local, train=True, tokenizer=tokenizer, dist=dist,
                                  seed=42, ranked=False)
        sched = StepScheduler(global_batch_size=2 * local, local_batch_size=local, dp_size=2, num_epochs=2,
                              dataloader=loader)
        epochs = []
        for epoch in sched.epochs:
            sched.set_epoch(epoch)
            epochs.append([int(i) for step in sched for batch in step
                           for i in batch["input_ids"][: pairs_in_batch(batch) if pairs else None, 0]])
        orders[path] = epochs
    return orders


@pytest.mark.slow
def test_shuffle_true_on_two_ranks_gives_disjoint_shuffled_halves_of_each_epoch(tiny_tokenizer):
    recipes = _shuffled_recipes()
    assert len(recipes) >= 5
    rank0, rank1 = run_on_ranks(_orders_on_two_ranks, 2, recipes, tiny_tokenizer)
    for path in recipes:
        for epoch in range(2):
            a, b = rank0[path][epoch], rank1[path][epoch]
            assert len(a) == len(b) == ROWS // 2, path
            assert not set(a) & set(b), path  # no sample on both ranks
            assert sorted(a + b) == list(range(ROWS)), path  # together: the whole epoch
            assert a != list(range(0, ROWS, 2)) and b != list(range(1, ROWS, 2)), path  # not the unshuffled deal
        assert rank0[path][0] != rank0[path][1], path  # each epoch is shuffled anew
    # The same seed gives every recipe the same order: the sampler, not the section, decides it.
    assert len({tuple(rank0[p][0]) for p in recipes}) == 1


def test_one_rank_shuffles_with_the_shipped_section(tiny_tokenizer):
    from nemo_like.components.distributed.init import DistInfo

    cfg = load_yaml_config(REPO / "recipes" / "smollm2_135m" / "sft_chat.yaml")
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    torch.manual_seed(0)
    loader = build_dataloader(cfg.get("dataloader"), _rows(), 4, train=True, tokenizer=tiny_tokenizer, dist=dist,
                              seed=42, ranked=False)
    order = [int(i) for batch in loader for i in batch["input_ids"][:, 0]]
    assert sorted(order) == list(range(ROWS)) and order != list(range(ROWS))


def test_local_batch_size_errors_name_the_step_scheduler_field(tiny_tokenizer):
    from nemo_like.components.distributed.init import DistInfo

    cfg = ConfigNode({"dataloader": {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"}})
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    for bad in (0, -2, "abc", 2.5, True):
        with pytest.raises(ConfigError, match=r"^step_scheduler\.local_batch_size: expected a positive integer"):
            build_dataloader(cfg.get("dataloader"), _rows(), bad, train=True, tokenizer=tiny_tokenizer, dist=dist,
                             seed=0, ranked=False)


# ---------------------------------------------------------------------- run length
def _steps(**kwargs) -> tuple[int, int]:
    """(optimizer steps taken, epochs begun) by the real loop over a 20-batch DataLoader."""
    loader = DataLoader(list(range(20)), batch_size=1)
    sched = StepScheduler(global_batch_size=1, local_batch_size=1, dataloader=loader, **kwargs)
    steps, epochs = 0, 0
    for epoch in sched.epochs:
        sched.set_epoch(epoch)
        epochs += 1
        for _ in sched:
            steps += 1
    assert sched.step == steps
    return steps, epochs


@pytest.mark.parametrize(
    "kwargs, steps, epochs",
    [
        ({"max_steps": 1000}, 1000, 50),  # max_steps alone: exactly that many steps, the epochs follow
        ({"max_steps": 30}, 30, 2),
        ({"num_epochs": 2}, 40, 2),
        ({"max_steps": 1000, "num_epochs": 3}, 60, 3),  # both: whichever ends first
        ({"max_steps": 25, "num_epochs": 3}, 25, 2),
        ({}, 200, 10),  # neither: NeMo AutoModel's 10 epochs
    ],
)
def test_run_length_follows_max_steps_and_num_epochs(kwargs, steps, epochs):
    assert _steps(**kwargs) == (steps, epochs)


def test_max_steps_alone_sets_the_last_step_and_checkpoints():
    loader = DataLoader(list(range(20)), batch_size=1)
    sched = StepScheduler(global_batch_size=1, local_batch_size=1, dataloader=loader, max_steps=45)
    saved = []
    for epoch in sched.epochs:
        sched.set_epoch(epoch)
        for _ in sched:
            if sched.is_ckpt_step:
                saved.append(sched.step)
    assert saved == [19, 39, 44] and sched.epoch == 3


def test_an_empty_loader_is_refused_not_looped_over():
    with pytest.raises(ConfigError, match="dataloader: one pass over the data gives no batches"):
        StepScheduler(global_batch_size=1, local_batch_size=1, dataloader=DataLoader([], batch_size=1),
                      max_steps=5)


# ---------------------------------------------------------------------- losses without label tokens
def test_masked_ce_without_label_tokens_is_zero_and_backpropagates():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    none = torch.full((2, 5), -100)
    for count in (0, torch.tensor(0), None):
        logits.grad = None
        loss = MaskedCrossEntropy()(logits, none, num_label_tokens=count)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert MaskedCrossEntropy(reduction="mean")(logits, none).item() == 0.0
    # bf16 logits, one micro-batch of a step whose other micro-batch has the labels
    half = logits.detach().bfloat16().requires_grad_()
    loss = MaskedCrossEntropy()(half, none, num_label_tokens=7)
    loss.backward()
    assert loss.item() == 0.0 and not half.grad.any()
    # with labels the count still divides
    labels = torch.randint(0, 11, (2, 5))
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), reduction="sum") / 10
    assert torch.allclose(MaskedCrossEntropy()(logits, labels, num_label_tokens=10), ref)


@pytest.mark.parametrize("only_labelled", [True, False])
def test_fused_linear_ce_without_label_tokens_is_zero_and_backpropagates(only_labelled):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    none = torch.full((2, 5), -100)
    loss_fn = FusedLinearCrossEntropy(only_labelled=only_labelled)
    for count in (0, torch.tensor(0)):
        hidden.grad = weight.grad = None
        loss = loss_fn(hidden, none, weight, num_label_tokens=count)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(hidden.grad, torch.zeros_like(hidden)) and torch.equal(weight.grad, torch.zeros_like(weight))
    assert FusedLinearCrossEntropy(reduction="mean", only_labelled=only_labelled)(hidden, none, weight).item() == 0.0


# ---------------------------------------------------------------------- step_scheduler values
@pytest.mark.parametrize(
    "field, value",
    [
        ("val_every_steps", 0), ("val_every_steps", -5), ("val_every_steps", "abc"),
        ("ckpt_every_steps", 0), ("ckpt_every_steps", -1), ("ckpt_every_steps", 2.5),
        ("global_batch_size", 0), ("global_batch_size", "abc"), ("global_batch_size", -8),
        ("local_batch_size", 0), ("local_batch_size", "abc"), ("local_batch_size", None), ("local_batch_size", True),
        ("max_steps", 0), ("max_steps", "ten"), ("num_epochs", 0), ("num_epochs", [1]),
    ],
)
def test_bad_step_scheduler_values_are_one_line_errors_naming_the_field(field, value):
    kwargs = {"global_batch_size": 4, "local_batch_size": 2, "max_steps": 10, field: value}
    with pytest.raises(ConfigError, match=rf"^step_scheduler\.{field}: expected a positive integer") as err:
        StepScheduler(**kwargs, dataloader=list(range(8)))
    assert "\n" not in str(err.value) and repr(value) in str(err.value)


def test_integral_floats_count_as_integers_and_null_turns_validation_off():
    sched = StepScheduler(global_batch_size=4.0, local_batch_size=2, max_steps=1e3, val_every_steps=None,
                          dataloader=list(range(8)))
    assert sched.max_steps == 1000 and sched.global_batch_size == 4 and not sched.is_val_step
