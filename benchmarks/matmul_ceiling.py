"""This machine's FLOP-rate ceiling at the model's own matmul shapes, in fp32 and bf16.

A training step of a LoRA-adapted decoder is, FLOP for FLOP, mostly these products:
every projection of every layer and the output layer, forward (tokens x in -> out) and,
for the gradient of the input, backward (tokens x out -> in). Timing each at the step's
token count and summing gives the time a step would take if it were nothing but matmuls
at the rate this CPU reaches on them: the ceiling the runs' model-FLOPs utilisation is
measured against.

    python benchmarks/matmul_ceiling.py --model-dir DIR --tokens 896 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import linear_shapes, model_config  # noqa: E402 - a script beside its helpers


def _seconds(a: torch.Tensor, b: torch.Tensor, min_time: float, max_reps: int) -> float:
    """Best-of time of one ``a @ b``, repeated until ``min_time`` has passed (at least twice)."""
    a @ b  # warm-up: first calls pick kernels and fault in pages
    best, spent, reps = float("inf"), 0.0, 0
    while reps < 2 or (spent < min_time and reps < max_reps):
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        best, spent, reps = min(best, took), spent + took, reps + 1
    return best


def measure(config: Any, tokens: int, dtypes: tuple[str, ...] = ("float32", "bfloat16"), min_time: float = 0.3,
            max_reps: int = 20, slow_rows: int = 64, slow_width: int = 4096) -> dict[str, Any]:
    """GFLOP/s per distinct shape and the FLOP-weighted ceiling for one step, for each dtype.

    bf16 on a CPU without bf16 units can be tens of times slower than fp32; when a probe
    shows that, its products are timed on ``slow_rows`` rows and at most ``slow_width``
    columns (the rate, not the time, is what is kept) so the measurement ends in seconds.
    """
    shapes: dict[tuple[int, int], int] = {}
    for _, fan_in, fan_out in linear_shapes(config):
        for shape in ((fan_in, fan_out), (fan_out, fan_in)):  # forward, and the input's gradient
            shapes[shape] = shapes.get(shape, 0) + 1
    torch.manual_seed(0)
    out: dict[str, Any] = {"tokens": tokens, "threads": torch.get_num_threads(), "dtypes": {}}
    for name in dtypes:
        dtype = getattr(torch, name)
        probe = _seconds(torch.randn(slow_rows, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype), 0.0, 2)
        slow = 2.0 * slow_rows * 512 * 512 / probe < 5e9  # under 5 GFLOP/s: shrink the products
        per_shape, total_flops, total_time = [], 0.0, 0.0
        for (fan_in, fan_out), count in shapes.items():
            rows, k, n = (slow_rows, min(fan_in, slow_width), min(fan_out, slow_width)) if slow else (
                tokens, fan_in, fan_out)
            a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            rate = 2.0 * rows * k * n / _seconds(a, b, min_time, max_reps)
            flops = 2.0 * tokens * fan_in * fan_out
            per_shape.append({"in": fan_in, "out": fan_out, "count": count, "gflops": rate / 1e9,
                              "timed": [rows, k, n]})
            total_flops += count * flops
            total_time += count * flops / rate
        out["dtypes"][name] = {"ceiling_gflops": total_flops / total_time / 1e9, "shrunk": slow,
                               "shapes": per_shape}
    best = max(out["dtypes"], key=lambda k: out["dtypes"][k]["ceiling_gflops"])
    out["ceiling_gflops"] = out["dtypes"][best]["ceiling_gflops"]
    out["ceiling_dtype"] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a transformers model directory (its config is read)")
    parser.add_argument("--tokens", type=int, required=True, help="tokens per micro-batch (rows of each product)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds to spend on each shape")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(model_config(args.model_dir), args.tokens, min_time=args.min_time)
    for name, d in result["dtypes"].items():
        print(f"{name}: ceiling {d['ceiling_gflops']:.1f} GFLOP/s at the model's shapes")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
