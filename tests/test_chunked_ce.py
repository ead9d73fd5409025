"""ChunkedCrossEntropy gives MaskedCrossEntropy's value and gradients, whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.loss.chunked_ce import ChunkedCrossEntropy
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy


def _data(dtype: torch.dtype = torch.float32, batch: int = 3, seq: int = 37, vocab: int = 101):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, seq, vocab, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[torch.rand(batch, seq, generator=gen) < 0.3] = IGNORE_INDEX  # prompt / padding positions
    labels[1] = IGNORE_INDEX  # a row without any label token
    return logits, labels


def _loss_and_grad(loss_fn, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.clone().requires_grad_(True)
    loss = loss_fn(leaf, labels, **kwargs)
    (loss * 1.7).backward()  # a non-unit upstream gradient
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("chunk_len", [1, 7, 32, 111, 10_000])
def test_value_and_gradients_equal_masked_ce(chunk_len):
    logits, labels = _data()
    count = int((labels != IGNORE_INDEX).sum())
    for kwargs in ({}, {"num_label_tokens": count}, {"num_label_tokens": torch.tensor(count)}):
        ref_loss, ref_grad = _loss_and_grad(MaskedCrossEntropy(), logits, labels, **kwargs)
        loss, grad = _loss_and_grad(ChunkedCrossEntropy(chunk_len=chunk_len), logits, labels, **kwargs)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
        assert grad[1].abs().sum() == 0  # ignored rows get no gradient


def test_bfloat16_logits_keep_their_dtype_and_match_fp32_upcast():
    logits, labels = _data(torch.bfloat16)
    ref_loss, ref_grad = _loss_and_grad(MaskedCrossEntropy(), logits, labels, num_label_tokens=50)
    loss, grad = _loss_and_grad(ChunkedCrossEntropy(chunk_len=16), logits, labels, num_label_tokens=50)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_other_reductions_and_mask_match(reduction):
    logits, labels = _data()
    mask = (torch.arange(labels.size(1)) % 3 != 0).expand_as(labels).int()
    ref_loss, ref_grad = _loss_and_grad(lambda lg, lb: MaskedCrossEntropy(reduction=reduction)(lg, lb, mask=mask).sum(),
                                        logits, labels)
    loss, grad = _loss_and_grad(lambda lg, lb: ChunkedCrossEntropy(5, reduction=reduction)(lg, lb, mask=mask).sum(),
                                logits, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(labels, _data()[1])  # the caller's labels are not written to


def test_no_label_tokens_is_zero_and_attached():
    logits, labels = _data()
    leaf = logits.clone().requires_grad_(True)
    loss = ChunkedCrossEntropy()(leaf, torch.full_like(labels, IGNORE_INDEX), num_label_tokens=0)
    loss.backward()
    assert loss.item() == 0.0 and leaf.grad.abs().sum() == 0


@pytest.mark.parametrize("bad", [{"chunk_len": 0}, {"chunk_len": 2.5}, {"reduction": "avg"}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError, match="loss_fn"):
        ChunkedCrossEntropy(**bad)


def test_yaml_target_builds_with_nemo_automodel_arguments():
    from nemo_like.config.loader import ConfigNode

    node = ConfigNode({"loss_fn": {"_target_": "nemo_like.components.loss.chunked_ce.ChunkedCrossEntropy",
                                   "chunk_len": 512, "compile": True}})
    loss_fn = node.loss_fn.instantiate()
    assert isinstance(loss_fn, ChunkedCrossEntropy) and loss_fn.chunk_len == 512


def test_recipe_losses_equal_masked_ce(tiny_sft_env, one_thread):
    """In the SFT step (sum over micro-batches / the step's label tokens) the two losses give the same run."""
    import json
    from pathlib import Path

    from nemo_like.recipes.llm.run import main

    tiny = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
    base = ["--config", tiny, "--step_scheduler.max_steps", "2", "--step_scheduler.val_every_steps", "none",
            "--checkpoint.enabled", "false"]
    losses = {}
    for name, target in (("masked", "masked_ce.MaskedCrossEntropy"), ("chunked", "chunked_ce.ChunkedCrossEntropy")):
        ckpt = tiny_sft_env["ckpt"] / name
        extra = ["--loss_fn.chunk_len", "5"] if name == "chunked" else []
        assert main([*base, "--checkpoint.checkpoint_dir", str(ckpt),
                     "--loss_fn._target_", f"nemo_like.components.loss.{target}", *extra]) == 0
        losses[name] = [json.loads(line)["loss"] for line in (ckpt / "training.jsonl").read_text().splitlines()]
    assert len(losses["chunked"]) == 2
    for a, b in zip(losses["chunked"], losses["masked"]):
        assert a == pytest.approx(b, rel=1e-5)
