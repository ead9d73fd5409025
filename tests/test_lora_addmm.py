"""The one-node LoRA path (in-place addmm): same numbers as the formula, and only x and xA kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_like.components._peft.lora import LinearLoRA


def _layer(bias: bool, dropout: float = 0.0, position: str = "pre") -> LinearLoRA:
    torch.manual_seed(0)
    layer = LinearLoRA(nn.Linear(24, 40, bias=bias), dim=4, alpha=8, dropout=dropout, dropout_position=position)
    layer.weight.requires_grad_(False)
    if layer.bias is not None:
        layer.bias.requires_grad_(False)
    with torch.no_grad():
        layer.lora_B.weight.normal_()  # a trained adapter, so every term counts
    return layer


def _reference(layer: LinearLoRA, x: torch.Tensor, x_lora: torch.Tensor) -> torch.Tensor:
    a, b = layer.lora_A.weight, layer.lora_B.weight
    return F.linear(x, layer.weight, layer.bias) + layer.scale * F.linear(F.linear(x_lora, a), b)


def _grads(out: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return list(torch.autograd.grad((out * torch.randn_like(out)).sum(), tensors))


@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_grads_equal_the_formula(bias: bool) -> None:
    layer = _layer(bias)
    x = torch.randn(3, 7, 24, requires_grad=True)
    out = layer(x)
    assert type(out.grad_fn).__name__ == "LoRAAddmmFunctionBackward"
    ref = _reference(layer, x, x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    params = (x, layer.lora_A.weight, layer.lora_B.weight)
    for ours, theirs in zip(_grads(out, *params), _grads(ref, *params)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_dropout_before_the_adapter_uses_the_same_mask() -> None:
    layer = _layer(bias=True, dropout=0.3, position="pre").train()
    x = torch.randn(2, 5, 24, requires_grad=True)
    torch.manual_seed(7)
    out = layer(x)
    assert type(out.grad_fn).__name__ == "LoRAAddmmFunctionBackward"
    torch.manual_seed(7)
    ref = _reference(layer, x, F.dropout(x, 0.3, training=True))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    params = (x, layer.lora_A.weight, layer.lora_B.weight)
    for ours, theirs in zip(_grads(out, *params), _grads(ref, *params)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_other_cases_keep_the_module_path() -> None:
    x = torch.randn(2, 5, 24)
    post = _layer(bias=False, dropout=0.3, position="post").train()
    assert type(post(x).grad_fn).__name__ != "LoRAAddmmFunctionBackward"
    dora = LinearLoRA(nn.Linear(24, 40), dim=4, alpha=8, use_dora=True)
    assert type(dora(x).grad_fn).__name__ != "LoRAAddmmFunctionBackward"


def test_keeps_only_the_input_and_the_rank_product() -> None:
    """What the backward holds: x (alive anyway) and [tokens, r]; no [tokens, out] temporaries."""
    layer = _layer(bias=True)
    x = torch.randn(64, 24, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert sorted(kept.values()) == sorted([64 * 4 * 4, x.untyped_storage().nbytes()])
