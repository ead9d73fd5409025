"""linear_token_logps equals log_softmax of the full logits, in value and in every gradient."""

from __future__ import annotations

import pytest
import torch

from nemo_like.components.loss.linear_logps import linear_token_logps


@pytest.mark.parametrize("bias, chunk", [(False, 3), (True, 5), (False, None)])
def test_values_and_gradients_equal_the_full_log_softmax(bias, chunk):
    g = torch.Generator().manual_seed(0)
    rows, width, vocab = 11, 16, 37
    hidden = torch.randn(rows, width, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=g)
    upstream = torch.randn(rows, generator=g, dtype=torch.float64)  # any loss of the values, not only their sum

    ours = linear_token_logps(hidden, weight, targets, b, chunk_size=chunk)
    (ours.double() * upstream).sum().backward()
    mine = [t.grad.clone() for t in (hidden, weight, b) if t is not None]
    for t in (hidden, weight, b):
        if t is not None:
            t.grad = None
    full = torch.log_softmax(torch.nn.functional.linear(hidden, weight, b), -1).gather(-1, targets[:, None])[:, 0]
    (full * upstream).sum().backward()
    theirs = [t.grad for t in (hidden, weight, b) if t is not None]
    assert torch.allclose(ours.double(), full, atol=1e-6)
    for a, e in zip(mine, theirs):
        assert torch.allclose(a, e, atol=1e-5), (a - e).abs().max()


def test_no_rows_is_an_empty_result_that_still_backpropagates():
    weight = torch.randn(7, 4, requires_grad=True)
    out = linear_token_logps(torch.zeros(0, 4), weight, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert weight.grad is not None and not weight.grad.any()
