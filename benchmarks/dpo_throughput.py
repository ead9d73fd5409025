"""LoRA DPO throughput: the library's DPO recipe against TRL's DPOTrainer on the same work.

Every contender trains the same model on the same preference pairs (the first ``steps x pairs_per_step`` rows of
data/preference/train.jsonl, file order, rendered as chat turns), with the same LoRA (r=8, alpha=16, no dropout, the
attention and MLP projections, the same initial adapters), AdamW, constant learning rate, clipping, beta and pairs
per optimizer step (one micro-batch), for the same number of steps, in fp32 on the CPU:

    (a) ours_padded       TrainDPORecipe, padded batches, reference = the policy with its adapters off,
                          MLPs keeping half their activations (``fused_swiglu``), the heap trimmed each step
    (s) ours_shared       the same with ``shared_prompt_preference_collater`` (one [prompt, chosen, rejected]
                          row per pair: each prompt computed once)
    (b) ours_packed       the same with ``packed_preference_collater`` (all sequences of a step in one row)
    (c) ours_precomputed  (a) with ``reference.mode: precomputed``: the reference log-probs of the trained pairs
                          are computed in one pass before training. That pass is charged to the run: its time,
                          times the share of the steps that are measured, is added to the measured time.
    (d) trl               TRL DPOTrainer + PEFT as DPOConfig comes otherwise (gradient checkpointing on)
    (e) trl_no_ckpt       the same without gradient checkpointing (not run unless named in --runners)

Each run is its own process, and runs alternate (a b c d a b c d ...) so a change in machine load hits all of them
alike. Reported per run: pairs/s and seconds/step over the steps after the warm-up, peak RSS (``ru_maxrss`` when
training ends, so the held-out scoring below does not count), and the held-out DPO loss after training: the
sigmoid loss over the first ``heldout_pairs`` validation pairs, scored by one function here for every contender
(same tokens, padded batches, full-vocabulary log-softmax), against reference log-probs computed once from the
untouched model. Then ratios ours/TRL per round: median (min-max), ending with ``ratio`` lines.

    python benchmarks/dpo_throughput.py --quick    # tiny Llama with SmolLM2's vocabulary: checks the harness (~2 min)
    python benchmarks/dpo_throughput.py            # SmolLM2-135M-Instruct, 10 steps of 8 pairs, 3 rounds
    python benchmarks/dpo_throughput.py --threads 1    # the same on cores other jobs share (spinning threads)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRAIN_JSONL = REPO / "data" / "preference" / "train.jsonl"
HELDOUT_JSONL = REPO / "data" / "preference" / "validation.jsonl"

DEFAULT_RUNNERS = ("ours_padded", "ours_shared", "trl", "trl_no_ckpt")
LABELS = {
    "ours_padded": "(a) nemo_like, padded",
    "ours_shared": "(s) nemo_like, shared prompt",
    "ours_packed": "(b) nemo_like, packed",
    "ours_precomputed": "(c) nemo_like, precomputed reference",
    "trl": "(d) TRL DPOTrainer",
    "trl_no_ckpt": "(e) TRL DPOTrainer, no checkpointing",
}
BASELINE, HEADLINE = "trl", "ours_padded"
RATIO_METRICS = {"pairs_per_s": "pairs_per_s", "peak_rss": "peak_rss", "heldout_loss": "heldout_loss"}

PRESETS = {
    # The real measurement: 8 x 2 sequences of ~57 tokens a step; ~4-5 min a run on 2 shared cores.
    "full": {"model": "smollm2", "steps": 10, "warmup_steps": 1, "repeats": 3, "pairs_per_step": 8,
             "heldout_pairs": 64},
    # The harness check: a 2-layer Llama with SmolLM2's vocabulary, one round.
    "quick": {"model": "tiny", "steps": 4, "warmup_steps": 1, "repeats": 1, "pairs_per_step": 4,
              "heldout_pairs": 16},
}


sys.path.insert(0, str(HERE))
from dpo_runners import (  # noqa: E402 - a script beside its helpers
    RUNNERS, Workload, completion_logps, conversational, read_jsonl, run, write_jsonl,
)


# ---------------------------------------------------------------- the parent: data, runs, figures
def prepare(work: Path, settings: dict[str, Any], threads: int) -> Workload:
    """The pairs every contender trains on and is scored by, tokenized once; the reference's held-out log-probs."""
    import torch
    from transformers import AutoModelForCausalLM

    from nemo_like._transformers.embedded import embedded_model_dir
    from nemo_like._transformers.tokenizer import build_tokenizer
    from nemo_like.components.datasets.llm.preference_dataset import PreferenceDataset

    sys.path.insert(0, str(HERE))
    from workload import tiny_model_dir  # noqa: PLC0415 - a helper beside this script

    smollm2 = embedded_model_dir()
    model_dir = smollm2 if settings["model"] == "smollm2" else tiny_model_dir(work, smollm2)
    tokenizer = build_tokenizer(model_dir)
    n_train = settings["steps"] * settings["pairs_per_step"]
    files = {}
    for split, source, n in (("train", TRAIN_JSONL, n_train), ("heldout", HELDOUT_JSONL, settings["heldout_pairs"])):
        rows = [conversational(r) for r in read_jsonl(source)[:n]]
        if len(rows) < n:
            raise SystemExit(f"error: {source} has {len(rows)} pairs, {n} needed")
        write_jsonl(work / f"{split}_rows.jsonl", rows)
        dataset = PreferenceDataset(str(work / f"{split}_rows.jsonl"), tokenizer)
        files[split] = [dataset[i] for i in range(len(dataset))]
    write_jsonl(work / "train_tokens.jsonl", files["train"])
    torch.set_num_threads(threads)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    chosen, rejected = completion_logps(reference, files["heldout"])
    del reference
    write_jsonl(work / "heldout_tokens.jsonl",
                [dict(p, ref_chosen=c, ref_rejected=r) for p, c, r in zip(files["heldout"], chosen, rejected)])
    return Workload(model=settings["model"], model_dir=model_dir, train_rows=str(work / "train_rows.jsonl"),
                    train_tokens=str(work / "train_tokens.jsonl"), heldout_tokens=str(work / "heldout_tokens.jsonl"),
                    steps=settings["steps"], warmup_steps=settings["warmup_steps"],
                    pairs_per_step=settings["pairs_per_step"], threads=threads)


def launch(name: str, workload_path: Path, work: Path, index: int, env: dict[str, str]) -> dict[str, Any]:
    """Run one contender in a child process; its record plus the child's whole-life peak RSS (from wait4)."""
    result, log = work / f"run{index:02d}_{name}.json", work / f"run{index:02d}_{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workload", str(workload_path),
           "--result", str(result)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{name}: worker failed (exit {code}); log {log}:\n{log.read_text()[-3000:]}")
    record = json.loads(result.read_text())
    record.update(runner=name, process_peak_rss_mib=usage.ru_maxrss / 1024, process_wall_s=time.perf_counter() - start,
                  load_before=load_before, load_after=os.getloadavg()[0])
    return record


def run_metrics(record: dict[str, Any], w: Workload) -> dict[str, Any]:
    """Per-run figures over the steps after the warm-up; a precomputing pass is charged pro rata to them."""
    ends, first = record["step_end_s"], w.warmup_steps
    if len(ends) < w.steps:
        raise RuntimeError(f"{record['runner']}: ran {len(ends)} of {w.steps} steps")
    measured = w.steps - first
    elapsed = ends[w.steps - 1] - (ends[first - 1] if first else 0.0)
    elapsed += record["precompute_s"] * measured / w.steps
    return {
        "runner": record["runner"],
        "pairs_per_s": measured * w.pairs_per_step / elapsed,
        "s_per_step": elapsed / measured,
        "peak_rss": record["peak_rss_mib"],
        "process_peak_rss": record["process_peak_rss_mib"],
        "heldout_loss": record["heldout_loss"],
        "heldout_accuracy": record["heldout_accuracy"],
        "precompute_s": record["precompute_s"],
        "losses": record["losses"],
        "tokens_match": record["tokens_match"],
        "load_before": record["load_before"],
        "load_after": record["load_after"],
        "process_wall_s": record["process_wall_s"],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """contender -> metric -> median/min/max of the per-round ratios contender / TRL."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["runner"]] = r
    out: dict[str, Any] = {}
    for contender in (n for n in names if n != BASELINE):
        for metric in RATIO_METRICS:
            values = [rd[contender][metric] / rd[BASELINE][metric] for rd in by_round.values()
                      if contender in rd and BASELINE in rd and rd[BASELINE][metric]]
            if values:
                out.setdefault(contender, {})[metric] = spread(values)
    return out


def ratio_lines(table: dict[str, Any]) -> list[str]:
    """``ratio <metric> ours/trl <median> (<min>-<max>)``; the padded recipe is "ours", the others say their name."""
    lines = []
    for contender, metrics in table.items():
        who = "ours" if contender == HEADLINE else contender
        for metric, s in metrics.items():
            lines.append(f"ratio {metric} {who}/trl {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LoRA DPO throughput: nemo_like's DPO recipe vs TRL's DPOTrainer")
    p.add_argument("--quick", action="store_true", help="tiny Llama, few steps, one round: checks the harness")
    p.add_argument("--model", choices=("smollm2", "tiny"))
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--repeats", type=int, help="alternating rounds of all runners")
    p.add_argument("--pairs-per-step", type=int)
    p.add_argument("--heldout-pairs", type=int)
    p.add_argument("--runners", default=",".join(DEFAULT_RUNNERS),
                   help="comma-separated subset of " + ",".join(RUNNERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default=None, help="data, logs, per-run records and result.json (default: a temp dir)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        record = run(args.worker, Workload.load(args.workload))
        Path(args.result).write_text(json.dumps(record) + "\n")
        return 0
    settings = dict(PRESETS["quick" if args.quick else "full"])
    for key in settings:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    if unknown := [n for n in names if n not in RUNNERS]:
        print(f"error: --runners: unknown {unknown}; choose from {list(RUNNERS)}", file=sys.stderr)
        return 2
    if not 0 <= settings["warmup_steps"] < settings["steps"]:
        print(f"error: --warmup-steps {settings['warmup_steps']} must be below --steps {settings['steps']}",
              file=sys.stderr)
        return 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dpo_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("NEMO_LIKE_DATASETS_CACHE", str(work / "token_cache"))  # not the user's cache
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    load_at_start = os.getloadavg()[0]
    if load_at_start > 1.5:
        print(f"warning: load average {load_at_start:.2f} > 1.5: other work shares these cores; "
              "the figures will be low and noisy", file=sys.stderr)

    w = prepare(work, settings, args.threads)
    workload_path = work / "workload.json"
    w.save(workload_path)
    runs: list[dict[str, Any]] = []
    index = 0
    for round_ in range(settings["repeats"]):
        for name in names:
            metrics = run_metrics(launch(name, workload_path, work, index, env), w)
            metrics.update(round=round_, order=index)
            runs.append(metrics)
            index += 1
            print(f"[{round_}] {name:17s} pairs/s {metrics['pairs_per_s']:6.2f}  s/step {metrics['s_per_step']:6.2f}"
                  f"  peak RSS {metrics['peak_rss']:6.0f} MiB  held-out loss {metrics['heldout_loss']:.4f}"
                  f"  (acc {metrics['heldout_accuracy']:.2f})  precompute {metrics['precompute_s']:.1f} s"
                  f"  load {metrics['load_before']:.1f}", flush=True)
            if not metrics["tokens_match"]:
                print(f"warning: {name} trained on other token ids than the library's tokenization", file=sys.stderr)

    summary = {name: {k: spread([r[k] for r in runs if r["runner"] == name])
                      for k in ("pairs_per_s", "s_per_step", "peak_rss", "heldout_loss")} for name in names}
    table = ratios(runs, names)
    lines = ratio_lines(table)
    sys.path.insert(0, str(HERE))
    from sft_throughput import _versions, machine_name  # noqa: PLC0415

    command = "python benchmarks/dpo_throughput.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"date": datetime.date.today().isoformat(), "machine": machine_name(), "command": command.strip(),
              "threads": args.threads, "load_at_start": load_at_start, "settings": settings,
              "versions": _versions(), "workload": asdict(w), "labels": {n: LABELS[n] for n in names},
              "runs": runs, "summary": summary, "ratios": table, "lines": lines}
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {work / 'result.json'}")
    for name, s in summary.items():
        print(f"{LABELS[name]:38s} pairs/s {s['pairs_per_s']['median']:6.2f}  s/step {s['s_per_step']['median']:6.2f}"
              f"  peak RSS {s['peak_rss']['median']:6.0f} MiB  held-out loss {s['heldout_loss']['median']:.4f}")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
