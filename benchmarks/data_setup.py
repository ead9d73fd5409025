"""Seconds and peak RSS of dataset set-up (what a run pays before its first step): nemo_like vs an Arrow peer.

    python benchmarks/data_setup.py [--rows 2000 20000] [--forms instruction chat] [--repeats 2] [--num-proc N]
    python benchmarks/data_setup.py --rows 100000 1000000     # long: minutes to tens of minutes a measure

Why: what a user with 100K-1M rows pays before training starts, against the usual Hugging Face way.
The datasets are Arrow-backed: rows tokenized in batches by ``datasets.map(num_proc=N)`` into a token
cache keyed by content (``components/datasets/token_table.py``); a second run maps the cache.

Data: synthetic, seeded, written to a temp dir (lognormal word counts, so lengths vary, with a tail):

* ``instruction``: ``{"instruction", "input", "response"}`` JSONL rows (``input`` empty for ~30%), read
  by ``ColumnMappedTextInstructionDataset`` with ``column_mapping {context: instruction, question: input,
  answer: response}``; the other arguments come from the ``dataset`` section of
  ``recipes/smollm2_135m/sft_quickstart.yaml`` (``use_hf_chat_template: true``).
* ``chat``: ``{"messages": [...]}`` JSONL rows (optional system, 1-4 user/assistant turns), read by
  ``ChatDataset`` with the ``dataset`` section of ``recipes/smollm2_135m/sft_chat.yaml``.

Sides, per form and size, each measure in a fresh process (so ``ru_maxrss`` is that measure's own peak):

* ``nemo_like``: the section built as the recipe builds it (``build_dataset`` with the recipe's tokenizer,
  ``max_length`` = the model's context, no packing, ``num_proc`` as the peer's), then ``len(ds)`` and
  ``ds[0]``, on an empty token cache (``NEMO_LIKE_DATASETS_CACHE`` in the temp dir).
* ``nemo_like_warm``: the same again on the cache the cold run left.
* ``peer``: ``datasets.load_dataset("json", data_files=..., split="train", cache_dir=...)`` then
  ``.map(batched=True, num_proc=N)`` with the same fast tokenizer giving ``input_ids``
  (``tokenizer.apply_chat_template(batch, tokenize=True)``; for the instruction form on the same
  user/assistant messages nemo_like renders), then ``len(ds)`` and ``ds[0]``. Cold: an empty cache.
* ``peer_warm``: the peer again on the cache its cold run left (datasets' own cache), the "warm" reference.

The peer is a reference, not an equal: it makes ``input_ids`` only (no labels / loss mask, no row-length
checks). Seconds are the dataset step alone (the tokenizer load, same for both, is printed apart as
``tok``). Peak RSS is the measuring process's; the peer's ``num_proc`` workers are separate processes,
and the largest of them is printed as ``workers``. ``ratio setup_time_<form>_<rows> nemo_like/peer``:
medians of the repeats, above 1 means nemo_like is slower; ``ratio peak_rss_...`` likewise.
Nothing is written outside the temp dir: the HF datasets cache goes there too (``cache_dir=`` and
``HF_DATASETS_CACHE``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"instruction": REPO / "recipes/smollm2_135m/sft_quickstart.yaml",
           "chat": REPO / "recipes/smollm2_135m/sft_chat.yaml"}
INSTRUCTION_MAPPING = {"context": "instruction", "question": "input", "answer": "response"}
SIDES = ("nemo_like", "nemo_like_warm", "peer", "peer_warm")
PACK_SIZE = [0]  # --pack-size: also pack the warm dataset (max_fill) and time it
WORDS = ("the a of to and in is it that for on with as was at by this be from or have an are not which one "
         "all were when we there can more if no out so what up its about into than them time only could new "
         "model data number list largest smallest sum order value token train step batch answer question "
         "because between python function return result error first second third after before while "
         "Paris 42 3.14 x_1 (note) e.g. well-known, however; [see] {k: v} 2024-01-01 naïve café").split()


# ---------------------------------------------------------------- synthetic data
def _texts(rng: np.random.Generator, n: int, median_words: float, lo: int, hi: int) -> list[str]:
    counts = np.clip(rng.lognormal(np.log(median_words), 0.9, size=n), lo, hi).astype(np.int64)
    picks = rng.integers(0, len(WORDS), size=int(counts.sum()))
    out, at = [], 0
    for c in counts.tolist():
        out.append(" ".join(WORDS[i] for i in picks[at:at + c]))
        at += c
    return out


def write_instruction(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    instructions = _texts(rng, n, 12, 2, 120)
    inputs = _texts(rng, n, 40, 1, 600)
    has_input = rng.random(n) > 0.3
    responses = _texts(rng, n, 60, 1, 1500)
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": instructions[i], "input": inputs[i] if has_input[i] else "",
                                "response": responses[i]}) + "\n")


def write_chat(path: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    turns = rng.integers(1, 5, size=n)
    has_system = rng.random(n) < 0.3
    total = int(turns.sum())
    users, assistants = _texts(rng, total, 20, 1, 300), _texts(rng, total, 45, 1, 600)
    systems = _texts(rng, n, 10, 2, 40)
    at = 0
    with path.open("w") as f:
        for i in range(n):
            messages = [{"role": "system", "content": systems[i]}] if has_system[i] else []
            for j in range(at, at + int(turns[i])):
                messages += [{"role": "user", "content": users[j]}, {"role": "assistant", "content": assistants[j]}]
            at += int(turns[i])
            f.write(json.dumps({"messages": messages}) + "\n")


# ---------------------------------------------------------------- one measure (child process)
def _peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak RSS in MiB: this process's own (``VmHWM``; ``ru_maxrss`` would start from the parent's peak,
    which it keeps across fork and exec), or the largest child's."""
    if who == resource.RUSAGE_SELF:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _recipe(form: str, data_file: str) -> tuple[Any, str]:
    """The recipe's ``dataset`` section pointed at ``data_file``, and its model id."""
    from nemo_like.config.loader import load_yaml_config

    cfg = load_yaml_config(RECIPES[form])
    section = cfg.dataset
    section["path_or_dataset_id"] = data_file
    if form == "instruction":
        section["column_mapping"] = dict(INSTRUCTION_MAPPING)
    return section, cfg.model.pretrained_model_name_or_path


def _instruction_messages(row_instruction: str, row_input: str, row_response: str) -> list[dict[str, str]]:
    """The user/assistant pair nemo_like renders for a row (its ``format_prompt`` of context + question)."""
    from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import format_prompt

    return [{"role": "user", "content": format_prompt(row_instruction, row_input or None)},
            {"role": "assistant", "content": row_response}]


def _ids(encoded: Any) -> list[list[int]]:
    """``apply_chat_template(tokenize=True)`` gives a BatchEncoding in transformers 5, lists before."""
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


def measure_one(side: str, form: str, data_file: str, cache_dir: str, num_proc: int,
                pack_size: int = 0) -> dict[str, Any]:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    section, model_id = _recipe(form, data_file)
    from nemo_like._transformers.tokenizer import build_tokenizer

    start = time.perf_counter()
    tokenizer = build_tokenizer(model_id)
    tok_seconds = time.perf_counter() - start
    before = _peak_mib()
    if side.startswith("nemo_like"):
        os.environ["NEMO_LIKE_DATASETS_CACHE"] = os.path.join(cache_dir, "nemo_like_tokens")
        section["num_proc"] = num_proc
        from nemo_like.recipes.builders.data import build_dataset
        from nemo_like.recipes.builders.model import model_context_length

        start = time.perf_counter()
        ds = build_dataset(section, tokenizer, max_length=model_context_length(model_id), packing=None)
        rows, first = len(ds), ds[0]
        seconds = time.perf_counter() - start
        peak = _peak_mib()
        tokens = int(ds.lengths.sum()) if hasattr(ds, "lengths") else None
        extra = {"workers_peak_mib": _peak_mib(resource.RUSAGE_CHILDREN)}
        if side == "nemo_like_warm" and pack_size:
            from nemo_like.components.datasets.llm.packed_sequence import PackedSequence

            start = time.perf_counter()
            packed = PackedSequence(ds, pack_size, skip_long_samples=True)
            packed[len(packed) - 1]
            extra.update(pack_seconds=time.perf_counter() - start, pack_peak_rss_mib=_peak_mib(),
                         packs=len(packed), fill=packed.stats["fill_ratio"],
                         skipped=packed.stats["skipped_too_long"])
    else:
        import datasets

        datasets.disable_progress_bars()
        files_before = sum(len(fs) for _, _, fs in os.walk(cache_dir))
        if form == "instruction":
            def tokenize(batch: dict[str, list]) -> dict[str, list]:
                convs = [_instruction_messages(*r) for r in zip(batch["instruction"], batch["input"], batch["response"])]
                return {"input_ids": _ids(tokenizer.apply_chat_template(convs, tokenize=True))}
        else:
            def tokenize(batch: dict[str, list]) -> dict[str, list]:
                return {"input_ids": _ids(tokenizer.apply_chat_template(batch["messages"], tokenize=True))}
        start = time.perf_counter()
        raw = datasets.load_dataset("json", data_files=data_file, split="train", cache_dir=cache_dir)
        ds = raw.map(tokenize, batched=True, num_proc=num_proc if num_proc > 1 else None,
                     remove_columns=raw.column_names)
        rows, first = len(ds), ds[0]
        seconds = time.perf_counter() - start
        peak = _peak_mib()
        import pyarrow.compute as pc

        tokens = int(pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py())
        files_after = sum(len(fs) for _, _, fs in os.walk(cache_dir))
        extra = {"new_cache_files": files_after - files_before, "workers_peak_mib": _peak_mib(resource.RUSAGE_CHILDREN)}
    return {"seconds": seconds, "tok_seconds": tok_seconds, "rss_before_mib": before, "peak_rss_mib": peak,
            "rows": rows, "first_len": len(first["input_ids"]), "tokens": tokens, **extra}


def run_child(side: str, form: str, data_file: Path, cache_dir: Path, num_proc: int, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", side, form, str(data_file), str(cache_dir), "--num-proc", str(num_proc),
           "--pack-size", str(PACK_SIZE[0])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache_dir),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cache_dir)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        print("    " + (lines[-1] if lines else f"exit {proc.returncode}"))
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line(label: str, r: dict | None, timeout: float) -> str:
    if r is None:
        return f"{label}: failed or over {timeout:.0f} s"
    text = (f"{label}: {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB "
            f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f} in set-up)  tok {r['tok_seconds']:.2f} s  "
            f"{r['rows']} rows  {r['tokens']} tokens  row0 {r['first_len']} ids")
    if "workers_peak_mib" in r:
        text += f"  workers {r['workers_peak_mib']:.0f} MiB"
    if "pack_seconds" in r:
        text += (f"\n      packed max_fill {r['pack_seconds']:.2f} s to {r['packs']} packs, fill {r['fill']:.2%}, "
                 f"{r['skipped']} documents longer than a pack skipped, peak RSS {r['pack_peak_rss_mib']:.0f} MiB")
    if "new_cache_files" in r:
        text += f"  new cache files {r['new_cache_files']}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000],
                        help="dataset sizes (100000 1000000 possible; long)")
    parser.add_argument("--forms", nargs="+", default=["instruction", "chat"], choices=sorted(RECIPES))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES,
                        help="a *_warm side needs its cold side (it reuses that run's cache)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats per form and size")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="the peer's map workers")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before one measure is given up")
    parser.add_argument("--pack-size", type=int, default=0,
                        help="also pack the warm nemo_like dataset into packs of this size (max_fill, longer "
                             "documents skipped) and time it")
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "FORM", "FILE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, form, data_file, cache_dir = args.child
        print(json.dumps(measure_one(side, form, data_file, cache_dir, args.num_proc, args.pack_size)))
        return
    PACK_SIZE[0] = args.pack_size
    print(f"peer: datasets.load_dataset('json') + map(batched=True, num_proc={args.num_proc}); "
          f"{args.repeats} alternating repeats; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="data_setup_") as tmp:
        root = Path(tmp)
        for form in args.forms:
            for n in args.rows:
                data_file = root / f"{form}_{n}.jsonl"
                start = time.perf_counter()
                (write_instruction if form == "instruction" else write_chat)(data_file, n)
                print(f"{form} {n:,} rows: {data_file.stat().st_size / 2**20:.1f} MiB JSONL "
                      f"(written in {time.perf_counter() - start:.1f} s)", flush=True)
                results: dict[str, list[dict]] = {side: [] for side in SIDES}
                for rep in range(args.repeats):
                    cache = root / f"cache_{form}_{n}_{rep}"  # a fresh, empty cache per cold run, each side
                    cache.mkdir()
                    ours = [s for s in SIDES[:2] if s in args.sides]
                    theirs = [s for s in SIDES[2:] if s in args.sides]
                    order = ours + theirs if rep % 2 == 0 else theirs + ours  # alternate which side runs first
                    cold_ok = set()
                    for side in order:
                        if side.endswith("_warm") and side.removesuffix("_warm") not in cold_ok:
                            continue  # no cold run to warm on
                        r = run_child(side, form, data_file, cache, args.num_proc, args.timeout)
                        print(line(f"  {form:<11} {n:>9,} {side:<14} #{rep + 1}", r, args.timeout), flush=True)
                        if r is not None:
                            results[side].append(r)
                            cold_ok.add(side)
                med = {side: (statistics.median(r["seconds"] for r in rs),
                              statistics.median(r["peak_rss_mib"] for r in rs)) for side, rs in results.items() if rs}
                for ours, ref in (("nemo_like", "peer"), ("nemo_like_warm", "peer_warm")):
                    if ours in med and ref in med:
                        print(f"ratio setup_time_{form}_{n} {ours}/{ref} {med[ours][0] / med[ref][0]:.2f}")
                        print(f"ratio peak_rss_{form}_{n} {ours}/{ref} {med[ours][1] / med[ref][1]:.2f}")
                for rep in range(args.repeats):  # datasets' cache for this size: not needed any more
                    _rmtree(root / f"cache_{form}_{n}_{rep}")
                data_file.unlink()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
