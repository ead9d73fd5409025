"""Seconds of the model loader offline: a hub id that is not cached, and the embedded SmolLM2's first and later loads.

    python benchmarks/loader_speed.py [--rounds 3]

Each round is a fresh process with an empty ``NEMO_LIKE_HOME`` and an empty hub cache, offline:

* ``unreachable``: ``from_pretrained`` of the model and of the tokenizer of an id that is not cached, until
  each raises its one-line error (no client retries: expected well under 5 s for both together);
* ``convert``: the first load of ``HuggingFaceTB/SmolLM2-135M-Instruct``, which converts the packaged GGUF;
* ``tokenizer``: its tokenizer from the converted directory;
* ``reload``: the model again, read from the converted directory.

Medians of the rounds, then ``ratio load_seconds convert/reload`` (how much the cache saves; above 1).
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
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from nemo_like import NeMoAutoModelForCausalLM, NeMoAutoTokenizer
out = {}
start = time.perf_counter()
for load in (NeMoAutoModelForCausalLM.from_pretrained, NeMoAutoTokenizer.from_pretrained):
    try:
        load("some-org/not-cached-model")
    except OSError:
        pass
    else:
        raise SystemExit("an id that is not cached loaded")
out["unreachable"] = time.perf_counter() - start
model, tokenizer = NeMoAutoModelForCausalLM.from_pretrained, NeMoAutoTokenizer.from_pretrained
for name, load in (("convert", model), ("tokenizer", tokenizer), ("reload", model)):
    start = time.perf_counter()
    load(sys.argv[2])
    out[name] = time.perf_counter() - start
print(json.dumps(out))
"""


def one_round() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="loader_speed_") as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE="1", NEMO_LIKE_HOME=str(Path(tmp) / "home"),
                   HF_HUB_CACHE=str(Path(tmp) / "hub"), TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), SMOLLM2], env=env, capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    runs = []
    for round_ in range(args.rounds):
        runs.append(one_round())
        print(f"round {round_}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for name, seconds in median.items():
        print(f"{seconds:7.2f} s  {name} (median of {len(runs)})")
    print(f"ratio load_seconds convert/reload {median['convert'] / median['reload']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
