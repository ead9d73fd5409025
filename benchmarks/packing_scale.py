"""Seconds and peak RSS of sequence packing at 10K, 100K and 1M documents, per strategy.

    python benchmarks/packing_scale.py [--size 2048] [--no-1m] [--baseline OLD_packed_sequence.py]

Why: packing runs once at set-up, before the first step; on a large SFT set it must not take minutes
or hold every pack in memory. Document lengths come from a seeded lognormal clipped to [8, size].

Two measures, each in a fresh process (so ``ru_maxrss`` is that measure's own peak):

* ``plan``: the planner alone, from an array of lengths (``pack_planner.plan_packs``): no rows at all.
* ``rows``: ``PackedSequence`` end to end on rows of ``input_ids``/``labels`` lists (only up to
  ``--rows-max`` documents, since the rows themselves take the memory).

``--baseline`` points at another copy of ``packed_sequence.py`` (e.g. the file before a change, saved
with ``git show HEAD:nemo_like/components/datasets/llm/packed_sequence.py > /tmp/old.py``); its
``rows`` figures are printed beside and ``ratio`` lines compare (seconds: baseline / new, higher is
better; peak RSS: new / baseline, lower is better).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("max_fill", "best_fit", "sequential")


def synthetic_lengths(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Varied document lengths, most short, a long tail: lognormal around size/16, clipped to [8, size]."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=np.log(size / 16), sigma=1.0, size=n)
    return np.clip(raw, 8, size).astype(np.int64)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_one(mode: str, strategy: str, n: int, size: int, module_path: str | None) -> dict[str, Any]:
    """One measure in this process: seconds of the packing step alone, peak RSS before and after."""
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(REPO))
    lengths = synthetic_lengths(n, size)
    if mode == "plan":
        from nemo_like.components.datasets.llm.pack_planner import plan_packs

        before = _peak_mib()
        start = time.perf_counter()
        plan = plan_packs(lengths, size, strategy)
        seconds = time.perf_counter() - start
        packs, tokens, used = len(plan), int(plan.tokens), plan.strategy
    else:
        if module_path:
            spec = importlib.util.spec_from_file_location("baseline_packed_sequence", module_path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            from nemo_like.components.datasets.llm import packed_sequence as module
        rows = [{"input_ids": [1] * k, "labels": [2] * k} for k in lengths.tolist()]  # small ints: shared objects
        before = _peak_mib()
        start = time.perf_counter()
        packed = module.PackedSequence(rows, size, packing_strategy=strategy)
        seconds = time.perf_counter() - start
        packs, tokens, used = packed.stats["packs"], packed.stats["tokens"], packed.stats["packing_strategy"]
    return {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": _peak_mib(), "packs": packs,
            "fill_ratio": tokens / (packs * size), "used": used}


def run_child(mode: str, strategy: str, n: int, size: int, module_path: str | None, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", mode, strategy, str(n), "--size", str(size)]
    if module_path:
        cmd += ["--baseline", module_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line(label: str, r: dict | None, timeout: float) -> str:
    if r is None:
        return f"{label}: failed or over {timeout:.0f} s"
    return (f"{label}: {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB "
            f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f} while packing)  {r['packs']} packs  "
            f"fill {r['fill_ratio']:.2%}  [{r['used']}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="packed_sequence_size")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--1m", dest="million", action=argparse.BooleanOptionalAction, default=True,
                        help="also 1,000,000 documents (plan only)")
    parser.add_argument("--rows-max", type=int, default=100_000, help="largest count measured end to end")
    parser.add_argument("--modes", nargs="+", default=["plan", "rows"], choices=["plan", "rows"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--baseline", default=None, help="another packed_sequence.py, measured end to end too")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before one measure is given up")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "STRATEGY", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, strategy, n = args.child
        print(json.dumps(measure_one(mode, strategy, int(n), args.size, args.baseline)))
        return
    counts = args.counts + ([1_000_000] if args.million else [])
    print(f"packed_sequence_size {args.size}, lognormal lengths clipped to [8, {args.size}]", flush=True)
    for n in counts:
        for strategy in args.strategies:
            new = None
            for mode in args.modes:
                if mode == "rows" and n > args.rows_max:
                    continue
                r = run_child(mode, strategy, n, args.size, None, args.timeout)
                print(line(f"{n:>9,} {strategy:<10} {mode:<4}", r, args.timeout), flush=True)
                new = r if mode == "rows" else new
            if args.baseline and "rows" in args.modes and n <= args.rows_max:
                old = run_child("rows", strategy, n, args.size, args.baseline, args.timeout)
                print(line(f"{n:>9,} {strategy:<10} base", old, args.timeout), flush=True)
                if old and new:
                    print(f"ratio speedup_{strategy}_{n} {old['seconds'] / new['seconds']:.2f}")
                    print(f"ratio peak_rss_{strategy}_{n} {new['peak_rss_mib'] / old['peak_rss_mib']:.2f}")
                    print(f"ratio fill_{strategy}_{n} {new['fill_ratio'] / old['fill_ratio']:.4f}")


if __name__ == "__main__":
    main()
