"""LoRA SFT throughput: nemo_like against transformers.Trainer and TRL on the same work.

Five contenders train the same model on the same tokens (the 2000 short rows that open
data/quickstart/train.jsonl, file order, answer-only labels), with the same LoRA (r=8, every linear layer but the output
layer), learning rate, clipping and tokens per optimizer step, for the same number of
steps:

    (a) nemo_like_padded   the library's recipe, padded batches, fused linear cross-entropy
    (b) nemo_like_packed   the same with packed sequences
    (c) hf_trainer         transformers.Trainer + PEFT, padded
    (d) trl_defaults       TRL SFTTrainer as SFTConfig comes (gradient checkpointing, bf16)
    (e) trl_tuned          TRL tuned: no checkpointing, fp32, TRL's own packing

Each run is its own process (its peak resident set is the process's), and runs alternate
(a b c d e a b c d e ...) so a change in machine load hits all of them alike. Reported per
run: label and total tokens/s, seconds/step, peak RSS, held-out loss, model-FLOPs utilisation
against a matmul ceiling measured at the model's shapes (``mfu``: the output layer at every token, as the
plain algorithm runs it; ``mfu_loss``: the output layer only at the positions the loss reads, the work a
step needs); then the ratios against (c), (d)
and (e) as median and min-max over the repeats, ending with one ``ratio`` line each.

    python benchmarks/sft_throughput.py --quick          # tiny Llama, a few steps: checks the harness (~2 min)
    python benchmarks/sft_throughput.py                  # SmolLM2-135M-Instruct: the real measurement
    python benchmarks/sft_throughput.py --data quickstart --runners nemo_like_padded,nemo_like_packed,hf_trainer,trl_tuned,trl_padding_free
                                                         # the quickstart's long-tail rows, 512-token packs
    python benchmarks/sft_throughput.py --data quickstart --epoch-docs 140 --runners nemo_like_packed,trl_tuned
                                                         # one epoch over the same 140 documents each: the label
                                                         # tokens/s of the same labels

(f) ``trl_padding_free`` is TRL tuned without packing but ``padding_free=True``: the padded contenders'
documents of a step laid end to end in one row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runners import LABELS, RUNNERS  # noqa: E402
from workload import REPO, Workload, model_flops  # noqa: E402 - a script beside its helpers

BASELINES = ("hf_trainer", "trl_defaults", "trl_tuned", "trl_padding_free")
HEADLINE = "nemo_like_packed"
# Metrics compared as ratios: contender / baseline (for peak RSS lower is better). Seconds per step are
# reported per run only: the contenders' steps hold the same documents but not the same token counts.
RATIO_METRICS = ("label_tokens_per_s", "tokens_per_s", "peak_rss", "final_loss")
MARK_START, MARK_END = "<!-- sft_throughput:start -->", "<!-- sft_throughput:end -->"

PRESETS = {
    # The real measurement: 8 documents (~430 tokens) or two 256-token packs a step, one forward a step for both.
    # (d) takes ~80 s a step on a 2-core CPU (emulated bf16), hence few steps: ~40 minutes in all.
    "full": {"model": "smollm2", "steps": 6, "warmup_steps": 1, "repeats": 3, "docs_per_step": 8,
             "pack_size": 256, "packs_per_step": 2, "packs_per_micro_batch": 2},
    # The quickstart's own workload: every training row (50-59 tokens, 13% of 120-340) in a seeded random order,
    # one 512-token pack a step (as recipes/smollm2_135m/sft_quickstart.yaml) or 7 documents padded.
    "quickstart": {"model": "smollm2", "steps": 6, "warmup_steps": 1, "repeats": 2, "docs_per_step": 7,
                   "pack_size": 512, "packs_per_step": 1, "packs_per_micro_batch": 1},
    # The harness check: a 2-layer Llama with SmolLM2's vocabulary, one round.
    "quick": {"model": "tiny", "steps": 4, "warmup_steps": 1, "repeats": 1, "docs_per_step": 4,
              "pack_size": 256, "packs_per_step": 1, "packs_per_micro_batch": 1},
}


def machine_name() -> str:
    """A short, stable name for this kind of machine: CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"{slug}-{os.cpu_count()}c"


# ---------------------------------------------------------------- one run in its own process
def run_worker(name: str, workload_path: str, result_path: str) -> int:
    import runners

    w = Workload.load(workload_path)
    record = runners.run(name, w)
    Path(result_path).write_text(json.dumps(record) + "\n")
    return 0


def launch(name: str, workload_path: Path, work: Path, index: int, env: dict[str, str]) -> dict[str, Any]:
    """Run one contender in a child process; its record plus the child's peak RSS (from wait4)."""
    result = work / f"run{index:02d}_{name}.json"
    log = work / f"run{index:02d}_{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workload", str(workload_path),
           "--result", str(result)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{name}: worker failed (exit {proc.returncode}); log {log}:\n{tail}")
    record = json.loads(result.read_text())
    record.update(runner=name, peak_rss_mib=usage.ru_maxrss / 1024, process_wall_s=wall,
                  load_before=load_before, load_after=os.getloadavg()[0])
    return record


# ---------------------------------------------------------------- metrics
def run_metrics(record: dict[str, Any], w: Workload, config: Any, ceiling_gflops: float | None) -> dict[str, Any]:
    """Per-run figures over the measured steps (the warm-up steps are excluded)."""
    ends, first, steps = record["step_end_s"], w.warmup_steps, w.steps
    if w.epoch:
        first, steps = 0, len(ends)
    if len(ends) < steps:
        raise RuntimeError(f"{record['runner']}: ran {len(ends)} of {steps} steps")
    elapsed = ends[steps - 1] - (ends[first - 1] if first else 0.0)
    docs = [n for step in record["docs"][first:steps] for n in step]
    if w.epoch and len(docs) != w.train_docs:
        raise RuntimeError(f"{record['runner']}: trained {len(docs)} documents of the epoch's {w.train_docs}")
    tokens, labels = sum(docs), sum(record["label_tokens"][first:steps])
    losses = record["losses"]
    tail = losses[-max(1, w.steps // 4) :]
    flops = model_flops(config, docs, w.lora_r)
    out = {
        "runner": record["runner"],
        "label_tokens_per_s": labels / elapsed,
        "tokens_per_s": tokens / elapsed,
        "s_per_step": elapsed / (steps - first),
        "steps": steps - first,
        "peak_rss": record["peak_rss_mib"],
        "final_loss": record["heldout_loss"],
        "train_loss_tail": statistics.mean(tail) if tail else float("nan"),
        "losses": losses,
        "last_loss": losses[-1] if losses else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "documents": len(docs),
        "tokens": tokens,
        "label_tokens": labels,
        "model_gflops_per_s": flops / elapsed / 1e9,
        "loss_gflops_per_s": model_flops(config, docs, w.lora_r, loss_positions=labels) / elapsed / 1e9,
        "load_before": record["load_before"],
        "load_after": record["load_after"],
        "process_wall_s": record["process_wall_s"],
    }
    out["mfu"] = out["model_gflops_per_s"] / ceiling_gflops if ceiling_gflops else None
    out["mfu_loss"] = out["loss_gflops_per_s"] / ceiling_gflops if ceiling_gflops else None
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """contender -> baseline -> metric -> median/min/max of the per-round ratios."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["runner"]] = run
    out: dict[str, Any] = {}
    for baseline in (b for b in BASELINES if b in names):
        for contender in (n for n in names if n != baseline):
            for metric in RATIO_METRICS:
                values = [r[contender][metric] / r[baseline][metric] for r in by_round.values()
                          if contender in r and baseline in r and r[baseline][metric]]
                if values:
                    out.setdefault(contender, {}).setdefault(baseline, {})[metric] = spread(values)
    return out


def ratio_lines(table: dict[str, Any]) -> list[str]:
    """``ratio <what>_vs_<baseline> <median>`` for the library's runs.

    <what> is the bare metric for the packed recipe (the headline), ``nemo_like_padded.<metric>`` for the padded one.
    """
    lines = []
    for contender in [c for c in (HEADLINE, "nemo_like_padded") if c in table]:
        for baseline, metrics in table.get(contender, {}).items():
            for metric, s in metrics.items():
                what = metric if contender == HEADLINE else f"{contender}.{metric}"
                lines.append(f"ratio {what}_vs_{baseline} {s['median']:.2f}")
    return lines


# ---------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    w, summary = result["workload"], result["summary"]
    ceiling = result.get("ceiling") or {}
    lines = [
        MARK_START,
        f"Measured {result['date']} on `{result['machine']}` ({result['threads']} threads, load "
        f"{result['load_at_start']:.2f} at the start), `{result['command']}`; model `{w['model']}`, "
        + (f"one epoch over {w['train_docs']} documents (every step timed), " if w.get("epoch") else
           f"{w['steps']} steps of which {w['warmup_steps']} warm-up, ")
        + f"{result['repeats']} alternating round(s), "
        f"{w['docs_per_step']} documents (padded) or {w['packs_per_step']} x {w['pack_size']}-token packs a step "
        f"({w['packs_per_micro_batch']} per forward).",
        "",
    ]
    if ceiling:
        per = ", ".join(f"{k} {v['ceiling_gflops']:.1f}" for k, v in ceiling["dtypes"].items())
        lines += [f"Matmul ceiling at the model's shapes ({ceiling['tokens']} rows): {per} GFLOP/s.", ""]
    lines += ["| run | label tok/s | tok/s | s/step | peak RSS MiB | held-out loss | MFU | MFU, loss positions |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        mfu_text = [f"{100 * s[k]['median']:.1f}%" if s.get(k) else "-" for k in ("mfu", "mfu_loss")]
        lines.append(f"| {result['labels'][name]} | {s['label_tokens_per_s']['median']:.1f} | "
                     f"{s['tokens_per_s']['median']:.0f} | {s['s_per_step']['median']:.2f} | "
                     f"{s['peak_rss']['median']:.0f} | {s['final_loss']['median']:.3f} | {' | '.join(mfu_text)} |")
    lines += ["", "Ratios, median (min-max) over the rounds:", "",
              "| run | vs | label tok/s | tok/s | peak RSS | held-out loss |", "|---|---|---:|---:|---:|---:|"]
    for contender, baselines in result["ratios"].items():
        for baseline, m in baselines.items():
            cells = [f"{m[k]['median']:.2f} ({m[k]['min']:.2f}-{m[k]['max']:.2f})"
                     for k in ("label_tokens_per_s", "tokens_per_s", "peak_rss", "final_loss")]
            lines.append(f"| {contender} | {baseline} | " + " | ".join(cells) + " |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_markdown(path: Path, block: str) -> None:
    """Replace the marked results block of ``path`` (or create the file with the block alone)."""
    text = path.read_text() if path.exists() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    path.write_text(text)


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LoRA SFT throughput: nemo_like vs transformers.Trainer vs TRL")
    p.add_argument("--quick", action="store_true", help="tiny Llama, few steps, one round: checks the harness")
    p.add_argument("--data", choices=("short", "quickstart"), default="short",
                   help="short: the 2000 short rows in file order; quickstart: every row, shuffled (long tail)")
    p.add_argument("--model", choices=("smollm2", "tiny"))
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--repeats", type=int, help="alternating rounds of all runners")
    p.add_argument("--docs-per-step", type=int)
    p.add_argument("--pack-size", type=int)
    p.add_argument("--packs-per-step", type=int)
    p.add_argument("--packs-per-micro-batch", type=int, help="packs per forward; the rest of a step accumulates")
    p.add_argument("--epoch-docs", type=int, metavar="N",
                   help="one epoch over the first N documents for every contender, each in as many steps as "
                        "its batching takes; the whole epoch is timed (its first step too): label tokens/s over "
                        "the same documents")
    p.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ",".join(RUNNERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling (no MFU)")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--markdown", default=str(REPO / "docs" / "performance.md"),
                   help="file whose results block is rewritten ('none' to skip)")
    p.add_argument("--work-dir", default=None, help="keep logs and per-run records here (default: a temp dir)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.workload, args.result)
    settings = dict(PRESETS["quick" if args.quick else "quickstart" if args.data == "quickstart" else "full"])
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        print(f"error: --runners: unknown {unknown}; choose from {list(RUNNERS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    load_at_start = os.getloadavg()[0]
    if load_at_start > 1.5:
        print(f"warning: load average {load_at_start:.2f} > 1.5: other work shares these cores; "
              "the figures will be low and noisy", file=sys.stderr)

    from nemo_like._transformers.embedded import embedded_model_dir
    from workload import (HELDOUT_DOCS, HELDOUT_JSONL, TRAIN_DOCS, TRAIN_JSONL, model_config, tiny_model_dir,
                          write_shuffled, write_tokens)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sft_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    smollm2 = embedded_model_dir()
    model_dir = smollm2 if settings["model"] == "smollm2" else tiny_model_dir(work, smollm2)
    tokens_path = work / "tokens.jsonl"
    train_jsonl, train_docs = TRAIN_JSONL, TRAIN_DOCS
    if args.data == "quickstart":
        train_jsonl, train_docs = write_shuffled(TRAIN_JSONL, work / "train_shuffled.jsonl"), None
    if args.epoch_docs:
        train_docs = args.epoch_docs
    data_stats = write_tokens(model_dir, tokens_path, limit=train_docs, source=train_jsonl)
    heldout_path = work / "heldout.jsonl"
    write_tokens(model_dir, heldout_path, limit=HELDOUT_DOCS, source=HELDOUT_JSONL)
    w = Workload(model=settings["model"], model_dir=model_dir, tokens_path=str(tokens_path),
                 heldout_path=str(heldout_path),
                 steps=settings["steps"], warmup_steps=settings["warmup_steps"],
                 docs_per_step=settings["docs_per_step"], pack_size=settings["pack_size"],
                 packs_per_step=settings["packs_per_step"], packs_per_micro_batch=settings["packs_per_micro_batch"],
                 threads=args.threads, train_jsonl=str(train_jsonl), train_docs=train_docs, epoch=bool(args.epoch_docs),
                 extra={"data": args.data})
    if not 0 <= w.warmup_steps < w.steps:
        print(f"error: --warmup-steps {w.warmup_steps} must be below --steps {w.steps}", file=sys.stderr)
        return 2
    if w.packs_per_step % w.packs_per_micro_batch:
        print(f"error: --packs-per-micro-batch {w.packs_per_micro_batch} must divide --packs-per-step "
              f"{w.packs_per_step}", file=sys.stderr)
        return 2
    workload_path = work / "workload.json"
    w.save(workload_path)
    config = model_config(model_dir)

    ceiling = None
    if not args.no_ceiling:
        tokens = round(w.docs_per_step * data_stats["mean_tokens"])
        out = work / "ceiling.json"
        subprocess.run([sys.executable, str(HERE / "matmul_ceiling.py"), "--model-dir", model_dir, "--tokens",
                        str(tokens), "--threads", str(args.threads), "--json", str(out),
                        "--min-time", "0.05" if args.quick else "0.3"], cwd=REPO, env=env, check=True)
        ceiling = json.loads(out.read_text())

    runs: list[dict[str, Any]] = []
    index = 0
    for round_ in range(settings["repeats"]):
        for name in names:
            record = launch(name, workload_path, work, index, env)
            metrics = run_metrics(record, w, config, ceiling["ceiling_gflops"] if ceiling else None)
            metrics.update(round=round_, order=index)
            runs.append(metrics)
            index += 1
            print(f"[{round_}] {name:18s} label tok/s {metrics['label_tokens_per_s']:8.1f}  tok/s "
                  f"{metrics['tokens_per_s']:8.1f}  s/step {metrics['s_per_step']:7.2f} ({metrics['steps']})  peak RSS "
                  f"{metrics['peak_rss']:6.0f} MiB  held-out loss {metrics['final_loss']:.4f}", flush=True)

    summary = {}
    for name in names:
        mine = [r for r in runs if r["runner"] == name]
        keys = [k for k in ("label_tokens_per_s", "tokens_per_s", "s_per_step", "peak_rss", "final_loss", "mfu",
                            "mfu_loss")
                if all(r.get(k) is not None for r in mine)]
        summary[name] = {k: spread([r[k] for r in mine]) for k in keys}
    table = ratios(runs, names)
    lines = ratio_lines(table)
    date = datetime.date.today().isoformat()
    command = "python benchmarks/sft_throughput.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "date": date, "machine": machine_name(), "command": command.strip(), "threads": args.threads,
        "load_at_start": load_at_start, "quick": args.quick, "repeats": settings["repeats"],
        "versions": _versions(), "workload": {k: v for k, v in vars(w).items() if k not in ("model_dir", "tokens_path")},
        "data": data_stats, "ceiling": ceiling, "labels": {n: LABELS[n] for n in names},
        "flops_note": model_flops.__doc__.strip().splitlines()[0],
        "runs": runs, "summary": summary, "ratios": table, "lines": lines,
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    tag = "-quick" if args.quick else "-quickstart-data" if args.data == "quickstart" else ""
    tag += f"-epoch{args.epoch_docs}" if args.epoch_docs else ""
    out_json = results_dir / f"{date}-{machine_name()}{tag}.json"
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown.lower() != "none":
        write_markdown(Path(args.markdown), markdown(result))
    print(f"results: {out_json}")
    for line in lines:
        print(line)
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
