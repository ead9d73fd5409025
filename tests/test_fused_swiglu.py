"""The fused SwiGLU MLP: the same model numbers, half the MLP tensors kept for the backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import tiny_llama_config
from nemo_like import NeMoAutoModelForCausalLM
from nemo_like._transformers.fused_swiglu import SwiGLUFunction


def test_gradient_equals_autograd_of_the_plain_expression() -> None:
    gate = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    up = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLUFunction.apply, (gate, up))
    torch.testing.assert_close(SwiGLUFunction.apply(gate, up), F.silu(gate) * up)


def _model(fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return NeMoAutoModelForCausalLM.from_config(tiny_llama_config(128), torch_dtype="float32", fused_swiglu=fused)


def test_model_logits_and_gradients_match_the_plain_model() -> None:
    plain, fused = _model(False), _model(True)
    ids = torch.randint(0, 128, (2, 12))
    outs = []
    for model in (plain, fused):
        logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-6, rtol=1e-6)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_mlp_keeps_two_intermediate_tensors_instead_of_four() -> None:
    counts = []
    for fused in (False, True):
        model = _model(fused)
        model.requires_grad_(False)
        model.model.embed_tokens.weight.requires_grad_(True)  # something to differentiate through the MLPs
        inter = model.config.intermediate_size
        kept: set[int] = set()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t: torch.Tensor, kept: set[int] = kept, inter: int = inter, weights: set[int] = weights) -> torch.Tensor:
            if t.dim() >= 2 and t.shape[-1] == inter and t.untyped_storage().data_ptr() not in weights:
                kept.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 128, (1, 9)))
        counts.append(len(kept) // model.config.num_hidden_layers)
    assert counts == [3, 2], counts  # frozen down_proj: plain keeps gate, silu, up; fused keeps gate, up
