"""Fused Triton kernels for a LoRA linear layer, forward and backward.

The layer computes

    y = x W^T + b + scale * (x A^T) B^T,      A: [r, in], B: [out, r], r small.

Design:

* The base product ``x W^T + b`` stays a cuBLAS call (``F.linear``): it is a large
  dense GEMM that cuBLAS already runs near peak, and fusing it would only re-tune a
  GEMM. The adapter kernel then adds into that output *in place*: one program owns a
  tile of rows, computes ``xa = x_tile A^T`` (only ``BLOCK_M x r`` numbers) in
  registers, and sweeps the output columns adding ``scale * xa B^T``. ``x A^T`` never
  touches global memory.
* Backward is a ``torch.autograd.Function`` that saves only ``x`` and the weights,
  never ``x A^T``. A row-tile kernel recomputes ``xa = x A^T`` and ``g = dY B`` on chip
  and adds ``scale * g A`` into ``dX = dY W`` (again a cuBLAS product, done in place);
  it writes the two ``[M, r]`` fp32 strips that the weight gradients need. A second
  kernel reduces over rows for ``dA = scale * g^T x`` and ``dB = scale * dY^T xa``,
  split along the rows into fp32 partials so long sequences still fill the GPU.
* The base weight is assumed frozen; if it does require grad, ``dW`` / ``db`` are
  computed with plain torch so the layer stays correct.

Every load is upcast to fp32 and every product accumulates in fp32 (Triton's CPU
interpreter computes half-precision products wrongly otherwise, and it keeps the
result independent of the input dtype); values are cast to the destination dtype on
store. fp32 inputs use IEEE fp32 products so the kernel matches torch's fp32 matmul;
half-precision inputs use TF32 tensor cores, which hold fp16/bf16 inputs exactly.

With ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on
the CPU with CPU tensors, with a single autotune config so nothing is benchmarked.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nemo_like's fused LoRA kernels need Triton: pip install 'nemo_like[triton]'"
    ) from err

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Smallest number of rows one program of the weight-gradient kernel reduces over
# before the rows are split across more programs (module level so tests can lower it).
MIN_ROWS_PER_SPLIT = 512
MAX_SPLITS = 64


def _configs(choices: list[dict[str, int]], interpreted: dict[str, int]) -> list[triton.Config]:
    """The autotune space; a single config under the interpreter, where timing means nothing."""
    if INTERPRET:
        return [triton.Config(interpreted, num_warps=1)]
    return [
        triton.Config({k: v for k, v in c.items() if k not in ("warps", "stages")},
                      num_warps=c["warps"], num_stages=c["stages"])
        for c in choices
    ]


_ROW_CONFIGS = _configs(
    [
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, warps=4, stages=3),
        dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, warps=4, stages=3),
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, warps=8, stages=3),
        dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, warps=4, stages=4),
    ],
    interpreted=dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32),
)
_GRAD_CONFIGS = _configs(
    [
        dict(BLOCK_P=64, BLOCK_M=64, warps=4, stages=3),
        dict(BLOCK_P=128, BLOCK_M=64, warps=4, stages=3),
        dict(BLOCK_P=128, BLOCK_M=128, warps=8, stages=3),
        dict(BLOCK_P=64, BLOCK_M=128, warps=4, stages=4),
    ],
    interpreted=dict(BLOCK_P=32, BLOCK_M=16),
)


@triton.autotune(configs=_ROW_CONFIGS, key=["N", "K", "R_PAD"], restore_value=["out_ptr"])
@triton.jit
def _lora_fwd_kernel(
    x_ptr, a_ptr, b_ptr, out_ptr,
    M, N, K, R, scale,
    stride_xm, stride_xk, stride_ar, stride_ak, stride_bn, stride_br, stride_om, stride_on,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[rows] += scale * (x[rows] A^T) B^T, with x[rows] A^T held in registers."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, R_PAD)
    row_ok = rows < M
    rank_ok = ranks < R

    xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        a_t = tl.load(a_ptr + ranks[None, :] * stride_ar + cols[:, None] * stride_ak,
                      mask=col_ok[:, None] & rank_ok[None, :], other=0.0).to(tl.float32)
        xa = tl.dot(x, a_t, xa, input_precision=PRECISION)
    xa = xa * scale

    for n0 in range(0, N, BLOCK_N):
        outs = n0 + tl.arange(0, BLOCK_N)
        out_ok = outs < N
        b_t = tl.load(b_ptr + outs[None, :] * stride_bn + ranks[:, None] * stride_br,
                      mask=rank_ok[:, None] & out_ok[None, :], other=0.0).to(tl.float32)
        o_ptrs = out_ptr + rows[:, None] * stride_om + outs[None, :] * stride_on
        o_mask = row_ok[:, None] & out_ok[None, :]
        acc = tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        acc = tl.dot(xa, b_t, acc, input_precision=PRECISION)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.autotune(configs=_ROW_CONFIGS, key=["N", "K", "R_PAD", "COMPUTE_DX"], restore_value=["dx_ptr"])
@triton.jit
def _lora_bwd_rows_kernel(
    x_ptr, dy_ptr, a_ptr, b_ptr, dx_ptr, xa_ptr, g_ptr,
    M, N, K, R, scale,
    stride_xm, stride_xk, stride_dym, stride_dyn, stride_ar, stride_ak, stride_bn, stride_br,
    stride_dxm, stride_dxk,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr, COMPUTE_DX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Recompute xa = x A^T and g = dY B per row tile; dx[rows] += scale * g A; spill xa, g.

    The ``[M, R_PAD]`` fp32 strips for ``xa`` and ``g`` are backward-only scratch for
    the weight-gradient reduction; nothing of ``x A^T`` is kept between passes.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, R_PAD)
    row_ok = rows < M
    rank_ok = ranks < R

    xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        a_t = tl.load(a_ptr + ranks[None, :] * stride_ar + cols[:, None] * stride_ak,
                      mask=col_ok[:, None] & rank_ok[None, :], other=0.0).to(tl.float32)
        xa = tl.dot(x, a_t, xa, input_precision=PRECISION)

    g = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        outs = n0 + tl.arange(0, BLOCK_N)
        out_ok = outs < N
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :] * stride_dyn,
                     mask=row_ok[:, None] & out_ok[None, :], other=0.0).to(tl.float32)
        b = tl.load(b_ptr + outs[:, None] * stride_bn + ranks[None, :] * stride_br,
                    mask=out_ok[:, None] & rank_ok[None, :], other=0.0).to(tl.float32)
        g = tl.dot(dy, b, g, input_precision=PRECISION)

    strip = rows[:, None] * R_PAD + ranks[None, :]
    tl.store(xa_ptr + strip, xa, mask=row_ok[:, None])
    tl.store(g_ptr + strip, g, mask=row_ok[:, None])

    if COMPUTE_DX:
        g = g * scale
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            a = tl.load(a_ptr + ranks[:, None] * stride_ar + cols[None, :] * stride_ak,
                        mask=rank_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            d_ptrs = dx_ptr + rows[:, None] * stride_dxm + cols[None, :] * stride_dxk
            d_mask = row_ok[:, None] & col_ok[None, :]
            acc = tl.load(d_ptrs, mask=d_mask, other=0.0).to(tl.float32)
            acc = tl.dot(g, a, acc, input_precision=PRECISION)
            tl.store(d_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=d_mask)


@triton.autotune(configs=_GRAD_CONFIGS, key=["P", "R_PAD"])
@triton.jit
def _lora_grad_kernel(
    lhs_ptr, strip_ptr, part_ptr,
    M, P, R, rows_per_split, scale,
    stride_lm, stride_lp, stride_split, stride_pp,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """part[split, p, r] = scale * sum over this split's rows m of lhs[m, p] * strip[m, r]."""
    cols = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ranks = tl.arange(0, R_PAD)
    col_ok = cols < P
    start = tl.program_id(1) * rows_per_split
    end = tl.minimum(start + rows_per_split, M)

    acc = tl.zeros((BLOCK_P, R_PAD), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        lhs_t = tl.load(lhs_ptr + rows[None, :] * stride_lm + cols[:, None] * stride_lp,
                        mask=col_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
        strip = tl.load(strip_ptr + rows[:, None] * R_PAD + ranks[None, :],
                        mask=row_ok[:, None], other=0.0).to(tl.float32)
        acc = tl.dot(lhs_t, strip, acc, input_precision=PRECISION)

    p_ptrs = part_ptr + tl.program_id(1) * stride_split + cols[:, None] * stride_pp + ranks[None, :]
    tl.store(p_ptrs, acc * scale, mask=col_ok[:, None] & (ranks[None, :] < R))


def _rank_pad(rank: int) -> int:
    """Rank padded to a power of two >= 16, the smallest shape ``tl.dot`` accepts."""
    return max(16, triton.next_power_of_2(rank))


def _precision(*tensors: torch.Tensor) -> str:
    """IEEE fp32 products when any operand is fp32 (torch parity), TF32 otherwise."""
    return "ieee" if any(t.dtype == torch.float32 for t in tensors) else "tf32"


def _check_device(x: torch.Tensor) -> None:
    if not x.is_cuda and not INTERPRET:
        raise RuntimeError(
            "lora_kernel: the Triton LoRA kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before import, to run them on the CPU)"
        )


def _weight_grad(lhs: torch.Tensor, strip: torch.Tensor, rank: int, scale: float, precision: str) -> torch.Tensor:
    """``scale * lhs^T @ strip[:, :rank]`` as fp32 ``[P, rank]``, reduced over row splits."""
    m, p = lhs.shape
    r_pad = strip.shape[1]
    rows_per_split = max(MIN_ROWS_PER_SPLIT, triton.cdiv(m, MAX_SPLITS))
    splits = triton.cdiv(m, rows_per_split)
    part = torch.empty((splits, p, rank), device=lhs.device, dtype=torch.float32)

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(p, meta["BLOCK_P"]), splits)

    _lora_grad_kernel[grid](
        lhs, strip, part, m, p, rank, rows_per_split, scale,
        lhs.stride(0), lhs.stride(1), part.stride(0), part.stride(1),
        R_PAD=r_pad, PRECISION=precision,
    )
    return part.sum(0) if splits > 1 else part[0]


class LoRALinearFunction(torch.autograd.Function):
    """``F.linear(x, W, b) + scale * (x A^T) B^T`` with fused adapter kernels; saves no ``x A^T``."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        _check_device(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = F.linear(x2, weight, bias)  # cuBLAS; the adapter kernel adds into it
        m, k = x2.shape
        n, rank = lora_b.shape
        if m > 0:
            def grid(meta: dict[str, Any]) -> tuple[int]:
                return (triton.cdiv(m, meta["BLOCK_M"]),)

            _lora_fwd_kernel[grid](
                x2, lora_a, lora_b, out, m, n, k, rank, float(scale),
                x2.stride(0), x2.stride(1), lora_a.stride(0), lora_a.stride(1),
                lora_b.stride(0), lora_b.stride(1), out.stride(0), out.stride(1),
                R_PAD=_rank_pad(rank), PRECISION=_precision(x2, lora_a, lora_b),
            )
        ctx.save_for_backward(x2, weight, lora_a, lora_b)
        ctx.scale = float(scale)
        ctx.x_shape = x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.reshape(*lead, n)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        m, k = x2.shape
        n, rank = lora_b.shape
        dy = grad_out.reshape(-1, n)
        r_pad = _rank_pad(rank)
        precision = _precision(dy, x2, lora_a, lora_b)

        dx = dy.mm(weight.to(dy.dtype)) if need_x else None  # cuBLAS; the kernel adds the adapter term
        grad_a = grad_b = None
        if m > 0 and (need_x or need_a or need_b):
            xa = torch.empty((m, r_pad), device=x2.device, dtype=torch.float32)
            g = torch.empty_like(xa)
            dx_arg = dx if dx is not None else xa  # unused when COMPUTE_DX is off

            def grid(meta: dict[str, Any]) -> tuple[int]:
                return (triton.cdiv(m, meta["BLOCK_M"]),)

            _lora_bwd_rows_kernel[grid](
                x2, dy, lora_a, lora_b, dx_arg, xa, g, m, n, k, rank, ctx.scale,
                x2.stride(0), x2.stride(1), dy.stride(0), dy.stride(1),
                lora_a.stride(0), lora_a.stride(1), lora_b.stride(0), lora_b.stride(1),
                dx_arg.stride(0), dx_arg.stride(1),
                R_PAD=r_pad, PRECISION=precision, COMPUTE_DX=dx is not None,
            )
            if need_a:
                grad_a = _weight_grad(x2, g, rank, ctx.scale, precision).t().to(lora_a.dtype)
            if need_b:
                grad_b = _weight_grad(dy, xa, rank, ctx.scale, precision).to(lora_b.dtype)
        elif m == 0:
            grad_a = torch.zeros_like(lora_a) if need_a else None
            grad_b = torch.zeros_like(lora_b) if need_b else None

        grad_w = dy.t().mm(x2.to(dy.dtype)).to(weight.dtype) if need_w else None  # only if unfrozen
        grad_bias = dy.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None and need_bias else None
        if dx is not None:
            dx = dx.to(x2.dtype).reshape(ctx.x_shape)
        return dx, grad_w, grad_bias, grad_a, grad_b, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``x W^T + b + scale * (x A^T) B^T`` for ``x`` of any leading shape ``[..., in]``.

    ``weight`` is ``[out, in]``, ``lora_a`` ``[r, in]``, ``lora_b`` ``[out, r]``. The
    adapter may have its own dtype (``lora_dtype``); the output has the base's dtype.
    """
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scale)
