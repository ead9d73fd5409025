"""LoRA GRPO throughput: the library's GRPO recipe against TRL's GRPOTrainer on the same work.

Every contender trains the same model (the embedded SmolLM2-135M-Instruct, loaded by the library's loader) on the
same prompts (the first ``steps x prompts_per_step`` rows of data/grpo/arithmetic/train.jsonl, file order, rendered
as the library's PromptDataset renders them: chat template, generation prompt, "The answer is"), with the same
group size, completion length, sampling temperature, reward (``exact_answer``), LoRA (r=16, alpha=32, no dropout,
the attention and MLP projections, the same initial adapters), AdamW, constant learning rate, clipping and loss
(DAPO, beta 0), for the same number of steps, in fp32 on the CPU:

    (a) ours          TrainGRPORecipe as recipes/smollm2_135m/grpo_arithmetic.yaml ships it (each prompt encoded
                      once per group; groups whose rewards are all equal are left out of the update)
    (a') ours_keep    the same with every group updated (``zero_std_groups: keep``), the work TRL does
    (a'') ours_fast   the shipped recipe with ``grpo.sampler: inverse_cdf`` (one random number per row and step
                      instead of generate's one per vocabulary entry; the same distribution, other tokens)
    (b) trl           TRL GRPOTrainer + PEFT as GRPOConfig comes otherwise (gradient checkpointing on)
    (c) trl_no_ckpt   the same without gradient checkpointing (usually faster on a CPU)

TRL is given the rendered text as a plain-string ``prompt`` column; the token ids it generates from are checked
against the library's. The two sample differently (different RNG use), so completions, and their lengths, differ:
the mean completion length of each run is reported beside its token rate, so a reader can see whether the rates
compare like with like. On the tiny Llama of ``--quick`` every reward is 0, so every group is left out of
ours' update (``update seqs 0``): its figures check the harness, not the speed.

Each run is its own process, and runs alternate (a b c a b c ...) so a change in machine load hits all of them
alike. Reported per run, over the steps after the warm-up: generated tokens/s (completion tokens over the seconds
of the generation calls only), seconds/step (median, wall clock between optimizer steps), generation and update
seconds/step (median; update = the step less its generate-and-score phase), peak RSS (``ru_maxrss`` when training
ends), mean completion length, sequences in the update and the mean reward. Then ratios ours/TRL per round, median
(min-max), against the faster TRL variant (``trl_best``: the lower median seconds/step) and each variant, ending
with ``ratio`` lines.

    python benchmarks/grpo_throughput.py --quick    # tiny Llama with SmolLM2's vocabulary: checks the harness (~2 min)
    python benchmarks/grpo_throughput.py            # SmolLM2-135M-Instruct, 6 steps of 8 prompts x 8, 3 rounds
    python benchmarks/grpo_throughput.py --threads 1    # the same on cores other jobs share (spinning threads)
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
TRAIN_JSONL = REPO / "data" / "grpo" / "arithmetic" / "train.jsonl"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

DEFAULT_RUNNERS = ("ours", "ours_keep", "trl", "trl_no_ckpt")
LABELS = {
    "ours": "(a) nemo_like TrainGRPORecipe",
    "ours_keep": "(a') the same, every group updated",
    "ours_fast": "(a'') the same, grpo.sampler: inverse_cdf",
    "trl": "(b) TRL GRPOTrainer",
    "trl_no_ckpt": "(c) TRL GRPOTrainer, no checkpointing",
}
TRL_RUNNERS = ("trl", "trl_no_ckpt")
HEADLINES = ("ours", "ours_keep", "ours_fast")
RATIO_METRICS = {"generated_tokens_per_s": "generated_tokens_per_s", "step_time": "s_per_step",
                 "peak_rss": "peak_rss"}
SUMMARY_METRICS = ("generated_tokens_per_s", "s_per_step", "generate_s_per_step", "update_s_per_step", "peak_rss",
                   "mean_completion_length", "update_sequences", "reward")

PRESETS = {
    # The real measurement: 8 prompts x 8 completions of up to 32 tokens a step; a few minutes a run on 2 cores.
    "full": {"model": "smollm2", "steps": 6, "warmup_steps": 1, "rounds": 3, "prompts_per_step": 8,
             "num_generations": 8, "max_completion_length": 32},
    # The harness check: a 2-layer Llama with SmolLM2's vocabulary, one round.
    "quick": {"model": "tiny", "steps": 3, "warmup_steps": 1, "rounds": 1, "prompts_per_step": 4,
              "num_generations": 4, "max_completion_length": 16},
}

sys.path.insert(0, str(HERE))
from grpo_runners import RECIPE_YAML, RUNNERS, Workload, run  # noqa: E402 - a script beside its helpers
from dpo_runners import read_jsonl, write_jsonl  # noqa: E402


# ---------------------------------------------------------------- the parent: data, runs, figures
def prepare(work: Path, settings: dict[str, Any], threads: int) -> Workload:
    """The prompts every contender trains on: the raw rows, and the same rendered and tokenized by the library."""
    from nemo_like._transformers.embedded import embedded_model_dir
    from nemo_like._transformers.tokenizer import build_tokenizer
    from nemo_like.components.datasets.llm.prompt_dataset import PromptDataset
    from nemo_like.config.loader import load_yaml_config

    sys.path.insert(0, str(HERE))
    from workload import tiny_model_dir  # noqa: PLC0415 - a helper beside this script

    model_dir = SMOLLM2 if settings["model"] == "smollm2" else tiny_model_dir(work, embedded_model_dir())
    tokenizer = build_tokenizer(model_dir)
    n = settings["steps"] * settings["prompts_per_step"]
    rows = read_jsonl(TRAIN_JSONL)[:n]
    if len(rows) < n:
        raise SystemExit(f"error: {TRAIN_JSONL} has {len(rows)} prompts, {n} needed")
    write_jsonl(work / "train_rows.jsonl", rows)
    section = load_yaml_config(RECIPE_YAML).dataset
    dataset = PromptDataset(str(work / "train_rows.jsonl"), tokenizer,
                            assistant_prefix=section.get("assistant_prefix", None))
    write_jsonl(work / "prompts.jsonl", [{"prompt": dataset[i]["prompt"], "answer": dataset[i]["columns"]["answer"],
                                          "prompt_ids": dataset[i]["prompt_ids"]} for i in range(len(dataset))])
    keys = ("steps", "warmup_steps", "prompts_per_step", "num_generations", "max_completion_length")
    return Workload(model=settings["model"], model_dir=model_dir, train_rows=str(work / "train_rows.jsonl"),
                    prompts=str(work / "prompts.jsonl"), work_dir=str(work), threads=threads,
                    **{k: settings[k] for k in keys})


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
    """Per-run figures over the steps after the warm-up."""
    ends, first = record["step_end_s"], w.warmup_steps
    if len(ends) < w.steps or len(record["generate_s"]) < w.steps or len(record["prepare_s"]) < w.steps:
        raise RuntimeError(f"{record['runner']}: ran {len(ends)} of {w.steps} steps "
                           f"({len(record['generate_s'])} generations)")
    starts = [0.0, *ends[:-1]]
    step_s = [ends[i] - starts[i] for i in range(first, w.steps)]
    update_s = [step_s[i - first] - record["prepare_s"][i] for i in range(first, w.steps)]
    measured = slice(first, w.steps)
    tokens, completions = sum(record["generated_tokens"][measured]), sum(record["completions"][measured])
    return {
        "runner": record["runner"],
        "generated_tokens_per_s": tokens / sum(record["generate_s"][measured]),
        "s_per_step": statistics.median(step_s),
        "generate_s_per_step": statistics.median(record["generate_s"][measured]),
        "update_s_per_step": statistics.median(update_s),
        "peak_rss": record["peak_rss_mib"],
        "process_peak_rss": record["process_peak_rss_mib"],
        "mean_completion_length": tokens / completions,
        "update_sequences": statistics.mean(record["update_sequences"][measured]),
        "reward": statistics.mean(record["rewards"][measured]) if record["rewards"] else float("nan"),
        "step_s": step_s,
        "losses": record["losses"],
        "tokens_match": record["tokens_match"],
        "load_before": record["load_before"],
        "load_after": record["load_after"],
        "process_wall_s": record["process_wall_s"],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(runs: list[dict[str, Any]], names: list[str], best: str | None) -> dict[str, dict[str, Any]]:
    """baseline -> metric -> median/min/max of the per-round ratios ours / that TRL run (``trl_best``: ``best``)."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["runner"]] = r
    baselines = ([("trl_best", best)] if best else []) + [(n, n) for n in names if n in TRL_RUNNERS]
    out: dict[str, Any] = {}
    for ours in (h for h in HEADLINES if h in names):
        for label, baseline in baselines:
            for metric, key in RATIO_METRICS.items():
                values = [rd[ours][key] / rd[baseline][key] for rd in by_round.values()
                          if ours in rd and baseline in rd and rd[baseline][key]]
                if values:
                    out.setdefault(f"{ours}/{label}", {})[metric] = spread(values)
    return out


def ratio_lines(table: dict[str, Any]) -> list[str]:
    """``ratio <metric> <ours run>/<trl run> <median> (<min>-<max>)``."""
    return [f"ratio {metric} {pair} {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
            for pair, metrics in table.items() for metric, s in metrics.items()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LoRA GRPO throughput: nemo_like's GRPO recipe vs TRL's GRPOTrainer")
    p.add_argument("--quick", action="store_true", help="tiny Llama, few steps, one round: checks the harness")
    p.add_argument("--model", choices=("smollm2", "tiny"))
    p.add_argument("--steps", type=int, help="optimizer steps per run, the warm-up included")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, help="alternating rounds of all runners")
    p.add_argument("--prompts-per-step", type=int)
    p.add_argument("--num-generations", type=int, help="completions per prompt (G)")
    p.add_argument("--max-completion-length", type=int)
    p.add_argument("--runners", default=",".join(DEFAULT_RUNNERS),
                   help="comma-separated subset of " + ",".join(RUNNERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default=None, help="data, logs, per-run records and result.json (default: a temp dir)")
    p.add_argument("--save", default=None, help="also write result.json here (e.g. benchmarks/results/...json)")
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
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="grpo_throughput_"))
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
    for round_ in range(settings["rounds"]):
        for name in names:
            metrics = run_metrics(launch(name, workload_path, work, index, env), w)
            metrics.update(round=round_, order=index)
            runs.append(metrics)
            index += 1
            print(f"[{round_}] {name:12s} gen tok/s {metrics['generated_tokens_per_s']:7.1f}"
                  f"  s/step {metrics['s_per_step']:6.2f} (gen {metrics['generate_s_per_step']:5.2f}"
                  f"  update {metrics['update_s_per_step']:5.2f})  peak RSS {metrics['peak_rss']:6.0f} MiB"
                  f"  mean len {metrics['mean_completion_length']:5.1f}  update seqs {metrics['update_sequences']:4.1f}"
                  f"  reward {metrics['reward']:.3f}  load {metrics['load_before']:.1f}", flush=True)
            if not metrics["tokens_match"]:
                print(f"warning: {name} generated from other token ids than the library's tokenization",
                      file=sys.stderr)

    summary = {name: {k: spread([r[k] for r in runs if r["runner"] == name]) for k in SUMMARY_METRICS}
               for name in names}
    present = [n for n in names if n in TRL_RUNNERS]
    best = min(present, key=lambda n: summary[n]["s_per_step"]["median"]) if present else None
    table = ratios(runs, names, best)
    lines = ratio_lines(table)
    sys.path.insert(0, str(HERE))
    from sft_throughput import _versions, machine_name  # noqa: PLC0415

    command = "python benchmarks/grpo_throughput.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"date": datetime.date.today().isoformat(), "machine": machine_name(), "command": command.strip(),
              "threads": args.threads, "load_at_start": load_at_start, "settings": settings,
              "versions": _versions(), "workload": asdict(w), "labels": {n: LABELS[n] for n in names},
              "trl_best": best, "runs": runs, "summary": summary, "ratios": table, "lines": lines}
    text = json.dumps(result, indent=2) + "\n"
    (work / "result.json").write_text(text)
    if args.save:
        Path(args.save).write_text(text)
    print(f"results: {work / 'result.json'}" + (f" and {args.save}" if args.save else ""))
    for name, s in summary.items():
        print(f"{LABELS[name]:40s} gen tok/s {s['generated_tokens_per_s']['median']:7.1f}"
              f"  s/step {s['s_per_step']['median']:6.2f} (gen {s['generate_s_per_step']['median']:5.2f}"
              f"  update {s['update_s_per_step']['median']:5.2f})  peak RSS {s['peak_rss']['median']:6.0f} MiB"
              f"  mean len {s['mean_completion_length']['median']:5.1f}  reward {s['reward']['median']:.3f}")
    if best:
        print(f"trl_best = {best} (the lower median s/step); step_time and peak_rss below 1: ours is faster/smaller")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
