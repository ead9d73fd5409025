"""``torch.compile`` (inductor) of the SFT step against eager, on the shipped quickstart workload, alternating runs.

    python benchmarks/compile_speed.py [--steps 30] [--rounds 2] [--attn sdpa]

Why: whether ``compile: {enabled: true}`` pays on this machine, and what it costs first. Each run is the
quickstart recipe (SmolLM2-135M-Instruct, LoRA r8, 512-token packs, one pack a step) in a fresh process,
without validation, generation eval or checkpoints, for ``--steps`` steps; ``eager`` and ``compiled``
(``--compile.enabled true``) alternate. Packs are cut to their real tokens, so widths vary: ``--dynamic``
compiles for varying shapes (without it each new width compiles again). The attention is ``--attn``
(``sdpa`` with the block-diagonal mask: ``packed_sdpa`` gathers documents by data-dependent indices).

Measured on a 2-core CPU (2026-12-05, ``--steps 12 --rounds 1 --dynamic``): the first compiled step took
359 s; later steps 1.46-1.50 s or 3.3-3.6 s (median 3.33 s) against eager 1.58-1.78 s (median 1.66 s);
losses equal to 2.6e-6. Compiling does not pay here, so ``compile`` stays off by default.

Per run: the first step's seconds (the compile happens there), the median of the steps after the
first three, and the losses. Prints medians over rounds, ``ratio compile_step_seconds compiled/eager``
(below 1: compiling pays), the compile overhead in seconds, and the largest loss difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes/smollm2_135m/sft_quickstart.yaml"


def one_run(compiled: bool, steps: int, attn: str, out: Path, dynamic: bool) -> dict[str, object]:
    ckpt = out / ("compiled" if compiled else "eager")
    args = [sys.executable, str(REPO / "examples/llm_finetune/finetune.py"), "--config", str(CONFIG),
            "--step_scheduler.max_steps", str(steps), "--step_scheduler.val_every_steps", str(10 ** 6),
            "--step_scheduler.ckpt_every_steps", str(10 ** 6), "--checkpoint.enabled", "false",
            "--checkpoint.checkpoint_dir", str(ckpt), "~generation_eval", "--model.attn_implementation", attn,
            "--compile.enabled", "true" if compiled else "false", "--compile.dynamic", "true" if dynamic else "false"]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    records = [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "time_s" in r and "loss" in r]
    times = [float(r["time_s"]) for r in records]
    return {"first": times[0], "steady": statistics.median(times[3:]), "losses": [float(r["loss"]) for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--dynamic", action="store_true", help="compile for varying shapes (packs are cut to their "
                        "real tokens, so widths vary)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, object]]] = {"eager": [], "compiled": []}
    with tempfile.TemporaryDirectory(prefix="compile_speed_") as tmp:
        for r in range(args.rounds):
            order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
            for name in order:
                out = Path(tmp) / f"{name}_{r}"
                out.mkdir()
                result = one_run(name == "compiled", args.steps, args.attn, out, args.dynamic)
                runs[name].append(result)
                print(f"round {r} {name:8s} first step {result['first']:6.2f} s  steady {result['steady']:.3f} s/step",
                      flush=True)
    steady = {k: statistics.median(float(x["steady"]) for x in v) for k, v in runs.items()}
    first = {k: statistics.median(float(x["first"]) for x in v) for k, v in runs.items()}
    diff = max(abs(a - b) for e, c in zip(runs["eager"], runs["compiled"])
               for a, b in zip(e["losses"], c["losses"]))  # type: ignore[arg-type]
    print(f"eager    steady {steady['eager']:.3f} s/step, first step {first['eager']:.2f} s")
    print(f"compiled steady {steady['compiled']:.3f} s/step, first step {first['compiled']:.2f} s "
          f"(compile overhead ~{first['compiled'] - first['eager']:.1f} s)")
    print(f"max loss difference {diff:.2e}")
    print(f"ratio compile_step_seconds compiled/eager {steady['compiled'] / steady['eager']:.2f}")


if __name__ == "__main__":
    main()
