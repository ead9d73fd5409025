"""Packing speed on the quickstart task: real tokens per second packed against padded, and one attention layer.

    python benchmarks/packing_speed.py [--rounds 3] [--warmup 1] [--threads N] [--only attention|quickstart]

Two measures, in one process:

* ``attention``: one attention layer of SmolLM2's shape (9 heads of 64, 3 key/value heads) over a
  512-token pack of nine documents, forward + backward, best of the repeats: SDPA under the block-causal
  mask against ``packed_sdpa`` (each document's attention alone).
* ``quickstart``: the quickstart recipe (LoRA r8 on all linear layers of the embedded SmolLM2-135M-Instruct,
  data/quickstart, rows of 50-59 tokens with a 13% tail of 120-340). ``padded`` = packing off, micro-batches
  of 8 rows in random order padded to the longest row (plain SDPA); ``packed`` = the recipe as shipped, one
  512-token pack a step under ``packed_sdpa``. Steps alternate between the two so that a change in machine
  load hits both alike; only tokens of real documents count.

Ends with ``ratio`` lines (higher is better for packing):
``ratio attention_seconds masked/per_document`` and ``ratio real_tokens_per_s packed/padded``;
the figures measured when packing landed were above 2 for both on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = 512
RUNS = ("padded", "packed")


def attention_case():
    """One attention layer of SmolLM2's shape (9 heads of 64, 3 key/value heads) over a 512-token pack of nine
    documents: (module, query, [key, value], block mask, position ids)."""
    import torch

    from nemo_like.components.datasets.llm.packed_sequence import block_causal_mask

    lengths = [57] * 8 + [PACK - 57 * 8]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    q = torch.randn(1, 9, PACK, 64, requires_grad=True)
    kv = [torch.randn(1, 3, PACK, 64, requires_grad=True) for _ in range(2)]
    module = torch.nn.Module()
    module.num_key_value_groups = 3
    return module, q, kv, block_causal_mask(positions), positions


def attention(repeats: int) -> dict[str, float]:
    """Best seconds of forward + backward of one layer: block mask vs per document."""
    import torch.nn.functional as F

    from nemo_like.components.datasets.llm.packed_attention import packed_sdpa_attention_forward

    module, q, kv, mask, positions = attention_case()

    def masked():
        return F.scaled_dot_product_attention(q, *kv, attn_mask=mask, enable_gqa=True).transpose(1, 2)

    def per_document():
        return packed_sdpa_attention_forward(module, q, *kv, mask, position_ids=positions)[0]

    assert (masked() - per_document()).abs().max() < 1e-5, "per-document attention differs from the block mask"
    times: dict[str, list[float]] = {"masked": [], "per_document": []}
    for _ in range(repeats + 1):
        for name, fn in (("masked", masked), ("per_document", per_document)):
            start = time.perf_counter()
            fn().sum().backward()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t[1:]) for name, t in times.items()}  # the first call of each warms up
    print(f"one attention layer, forward + backward, 512-token pack: block mask {1e3 * best['masked']:.1f} ms, "
          f"per document {1e3 * best['per_document']:.1f} ms", flush=True)
    return best


def quickstart_recipe(run: str):
    """The shipped quickstart recipe, packed as shipped or padded in batches of 8; set up, nothing trained."""
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg = load_yaml_config(REPO / "recipes" / "smollm2_135m" / "sft_quickstart.yaml")
    for section in ("generation_eval", "validation_dataset", "validation_dataloader"):
        del cfg[section]
    for key, value in {"checkpoint.enabled": False, "step_scheduler.max_steps": 1000,
                       "step_scheduler.val_every_steps": None, "dist_env.backend": "gloo",
                       "disable_progress_bar": True}.items():
        cfg.set_by_path(key, value)
    if run != "packed":
        cfg.set_by_path("packed_sequence.packed_sequence_size", 0)
        cfg.set_by_path("model.attn_implementation", "sdpa")
        cfg.set_by_path("step_scheduler.local_batch_size", 8)
        cfg.set_by_path("step_scheduler.global_batch_size", 8)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    return recipe


def quickstart(warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Real tokens per second of optimizer steps, the two runs alternating step by step."""
    import torch

    from nemo_like.components.datasets.llm.packed_sequence import real_tokens

    runs = {run: quickstart_recipe(run) for run in RUNS}
    iterators = {run: iter(recipe.dataloader) for run, recipe in runs.items()}
    totals = {run: {"real": 0, "all": 0, "seconds": 0.0} for run in runs}
    for round_ in range(warmup + rounds):
        for run, recipe in runs.items():
            batch = next(iterators[run])
            start = time.perf_counter()
            recipe._run_train_optim_step([batch])
            seconds = time.perf_counter() - start
            if round_ >= warmup:
                totals[run]["real"] += real_tokens(batch)
                totals[run]["all"] += batch["input_ids"].numel()
                totals[run]["seconds"] += seconds
    out: dict[str, dict[str, float]] = {}
    for run, t in totals.items():
        f = out[run] = {"real_tps": t["real"] / t["seconds"], "pad_fraction": 1 - t["real"] / t["all"],
                        "real_per_step": t["real"] / rounds, "seconds_per_step": t["seconds"] / rounds}
        print(f"{run:7s}: {f['real_tps']:6.1f} real tokens/s | {f['real_per_step']:4.0f} real tokens a step in "
              f"{f['seconds_per_step']:.2f} s | padding {100 * f['pad_fraction']:.1f}% of tokens", flush=True)
    ceiling = 1 / (1 - out["padded"]["pad_fraction"])
    print(f"the padding removed alone is worth {ceiling:.2f}x; pack fill "
          f"{100 * runs['packed'].dataset.stats['fill_ratio']:.1f}%, {torch.get_num_threads()} threads, "
          f"1-min load average {os.getloadavg()[0]:.1f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="timed steps of each quickstart run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each quickstart run first")
    p.add_argument("--repeats", type=int, default=7, help="timed calls of each attention variant (best is kept)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--only", choices=("attention", "quickstart"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lines = []
    if args.only in (None, "attention"):
        best = attention(args.repeats)
        lines.append(f"ratio attention_seconds masked/per_document {best['masked'] / best['per_document']:.2f}")
    if args.only in (None, "quickstart"):
        out = quickstart(args.warmup, args.rounds)
        ratio = out["packed"]["real_tps"] / out["padded"]["real_tps"]
        lines.append(f"ratio real_tokens_per_s packed/padded {ratio:.2f}")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
