"""``nemo-like advise``: starting hyperparameters for a data set, or a diagnosis of a finished run.

Why a command: the guide's tables and curve-reading rules are applied the same way every time, with
the overrides to paste and, with ``--tune``, a search for ``nemo-like tune`` centred on the advice.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any

EXAMPLES = """examples:
  nemo-like advise --dataset data/train.jsonl --method lora --model-size 135M
  nemo-like advise --dataset data/my_set/ --split train --method sft --tokenizer path/to/model
  nemo-like advise --dataset prefs.jsonl --method dpo --tune tune.yaml --recipe recipes/smollm2_135m/dpo_lora.yaml
  nemo-like advise --run checkpoints/my_run
  nemo-like advise --run checkpoints/my_run --tune tune.yaml
"""


class AdviseError(Exception):
    """A user error reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nemo-like advise",
        description="Starting hyperparameters from a data set's size (--dataset), or what to change after a run "
                    "(--run), following the fine-tuning hyperparameter guide.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dataset", help="training data: .jsonl/.json/.parquet/.csv, or a folder of split files")
    mode.add_argument("--run", metavar="DIR", help="a run's checkpoint_dir (training.jsonl, validation.jsonl)")
    p.add_argument("--method", choices=("sft", "lora", "dpo", "grpo"), help="with --dataset: the training method")
    p.add_argument("--split", default="train", help="with a folder: the split to count (default: train)")
    p.add_argument("--model-size", help="parameters of the base model, e.g. 135M, 1.5B, 8B")
    p.add_argument("--full", action="store_true", help="dpo/grpo: full fine-tune instead of LoRA adapters")
    p.add_argument("--tokenizer", help="a local tokenizer/model folder to count tokens (default: characters / 4)")
    p.add_argument("--sample", type=int, default=200, help="rows read to estimate tokens per row (0: skip)")
    p.add_argument("--tune", metavar="OUT.yaml", help="also write a tune.yaml centred on the advice")
    p.add_argument("--recipe", help="the base recipe for --tune (with --run: default the run's saved config.yaml)")
    p.add_argument("--trials", type=int, default=8, help="n_trials of the tune.yaml (default: 8)")
    p.add_argument("--tune-output-dir", help="output_dir of the tune.yaml (default: tune_runs beside OUT.yaml)")
    p.add_argument("--json", action="store_true", help="print the advice as JSON")
    return p


def _token_counter(path: str | None) -> Any:
    if not path:
        return None
    if not os.path.exists(path):
        raise AdviseError(f"--tokenizer {path}: not found (give a local tokenizer or model folder)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def dataset_mode(args: argparse.Namespace) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The advice as data, as text, and the tune plan (search space, fixed overrides, method)."""
    from nemo_like.components.datasets.json_rows import DatasetError
    from nemo_like.components.tuning.advisor import dataset_advice, dataset_search_space, fmt_value, parse_model_size
    from nemo_like.components.tuning.advisor_data import describe_data
    from nemo_like.components.tuning.advisor_tables import BUCKET_LABELS

    if not args.method:
        raise AdviseError("--dataset needs --method (sft, lora, dpo or grpo)")
    if not os.path.exists(os.path.expanduser(args.dataset)):
        raise AdviseError(f"{args.dataset}: data file not found")
    try:
        size = parse_model_size(args.model_size)
        stats = describe_data(args.dataset, args.split, max(args.sample, 0), _token_counter(args.tokenizer))
    except (DatasetError, ValueError, OSError) as e:
        raise AdviseError(str(e).splitlines()[0]) from None
    advice = dataset_advice(stats.rows, args.method, model_size=size, lora=False if args.full else None,
                            tokens_per_row=stats.tokens_per_row, tokens_p95=stats.tokens_p95)
    lines = [f"data: {args.dataset} ({len(stats.files)} file{'s' if len(stats.files) != 1 else ''}): "
             f"{stats.rows:,} rows -> {BUCKET_LABELS[advice.bucket]}"]
    if stats.tokens_per_row is not None:
        lines.append(f"tokens per row: about {stats.tokens_per_row:,.0f} (95th percentile {stats.tokens_p95}; "
                     f"{stats.token_source}, {stats.sampled} rows sampled)")
    lines.append(f"method: {advice.method}" + (" with LoRA adapters" if advice.lora else " (full fine-tune)"))
    lines += ["", _table([("setting", "start", "range", "why")] +
                         [(s.key, fmt_value(s.value), s.range_text(), s.why) for s in advice.settings])]
    notes = list(advice.notes)
    if advice.has("step_scheduler.num_epochs"):
        notes.append("a max_steps in the recipe wins over num_epochs: drop it (--step_scheduler.max_steps none)")
    if advice.lora:
        notes.append("a recipe without a peft section also needs --peft._target_ "
                     "nemo_like.components._peft.lora.PeftConfig --peft.match_all_linear True")
    lines += ["", "notes:"] + [f"  - {n}" for n in notes]
    lines += ["", "overrides to paste:", f"  {advice.override_line()}"]
    plan = {"space": dataset_search_space(advice), "fixed": {s.key: s.value for s in advice.settings},
            "method": "sft" if advice.method == "lora" else advice.method, "lora": advice.lora}
    return advice.to_dict(), "\n".join(lines), plan


def _saved_config(run_dir: str) -> str | None:
    """The run's config.yaml: the LATEST checkpoint's, else the newest checkpoint's, else one at the top."""
    latest = os.path.join(run_dir, "LATEST")
    if os.path.isfile(latest):
        path = os.path.join(run_dir, open(latest, encoding="utf-8").read().strip(), "config.yaml")
        if os.path.isfile(path):
            return path
    found = sorted(glob.glob(os.path.join(run_dir, "epoch_*_step_*", "config.yaml")), key=os.path.getmtime)
    if found:
        return found[-1]
    top = os.path.join(run_dir, "config.yaml")
    return top if os.path.isfile(top) else None


def _load_config(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def run_mode(args: argparse.Namespace) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The diagnoses as data, as text, and the tune plan (search space, fixed overrides, method)."""
    from nemo_like.components.tuning.advisor import (
        RunSettings,
        diagnose_run,
        read_run,
        recommended_changes,
        run_search_space,
    )

    try:
        train, val = read_run(args.run)
    except (OSError, ValueError) as e:
        raise AdviseError(str(e).splitlines()[0]) from None
    config_path = _saved_config(args.run)
    config = _load_config(config_path) or {}
    settings = RunSettings.from_config(config, train)
    found = diagnose_run(train, val, settings)
    args.saved_config = config_path
    steps = [r["step"] for r in train if isinstance(r.get("step"), int)]
    lines = [f"run: {args.run}: {len(train)} steps ({min(steps)}..{max(steps)}), {len(val)} validations"
             + (f"; config {config_path}" if config_path else "")]
    for d in found:
        lines += ["", f"[{d.severity}] {d.kind}: {d.summary}"]
        lines += [f"    evidence: {e}" for e in d.evidence]
        if d.changes:
            lines.append(f"    next: {d.overrides()}")
        if d.add_yaml:
            lines += ["    add to the recipe:"] + [f"      {line}" for line in d.add_yaml.splitlines()]
        if d.hint:
            lines.append(f"    hint: {d.hint}")
    merged = recommended_changes(found)
    if merged:
        lines += ["", "all next overrides together:",
                  "  " + " ".join(f"--{k} {v}" for k, v in ((k, _fmt(v)) for k, v in merged.items()))]
    result = {"run": args.run, "config": config_path, "steps": len(train), "validations": len(val),
              "diagnoses": [d.to_dict() for d in found], "changes": merged}
    method = next((m for m in ("dpo", "grpo") if isinstance(config.get(m), dict)), None)
    plan = {"space": run_search_space(found, settings), "fixed": merged, "method": method, "lora": False}
    return result, "\n".join(lines), plan


def _fmt(v: Any) -> str:
    from nemo_like.components.tuning.advisor import fmt_value

    return fmt_value(v)


def write_tune(args: argparse.Namespace, plan: dict[str, Any]) -> str:
    import yaml

    from nemo_like.components.tuning.advisor import tune_yaml

    recipe = args.recipe or getattr(args, "saved_config", None)
    if not recipe:
        raise AdviseError("--tune needs --recipe (the base recipe YAML to tune)"
                          + ("" if args.dataset else "; the run folder has no saved config.yaml"))
    if not os.path.isfile(recipe):
        raise AdviseError(f"--recipe {recipe}: not found")
    if not args.recipe and "'***'" in open(recipe, encoding="utf-8").read():
        print(f"warning: {recipe} hides values the run read from the environment ('***'); "
              "pass --recipe with the original YAML", file=sys.stderr)
    out = args.tune
    output_dir = args.tune_output_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "tune_runs")
    fixed = dict(plan["fixed"])
    base = _load_config(recipe) or {}
    if plan["lora"] and "peft" not in base:  # adapters need a section to live in
        fixed = {"peft._target_": "nemo_like.components._peft.lora.PeftConfig", "peft.match_all_linear": True,
                 **fixed}
    epochs_searched = "step_scheduler.num_epochs" in plan["space"] or "step_scheduler.num_epochs" in fixed
    if epochs_searched and (base.get("step_scheduler") or {}).get("max_steps") is not None:
        fixed["step_scheduler.max_steps"] = None  # the recipe's max_steps would cut every epoch count short
    doc = tune_yaml(os.path.abspath(recipe), plan["space"], output_dir=output_dir, n_trials=args.trials,
                    overrides=fixed, method=plan["method"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def advise_main(argv: list[str]) -> int:
    """Entry point of ``nemo-like advise``; returns the exit status (2: a user error, one line)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): a status, not an exception, for the caller
        return int(e.code or 0)
    try:
        if args.trials < 1:
            raise AdviseError(f"--trials: expected a positive count, got {args.trials}")
        result, text, plan = dataset_mode(args) if args.dataset else run_mode(args)
        if args.tune:
            result["tune"] = write_tune(args, plan)
            text += f"\n\ntune search written to {args.tune} ({', '.join(plan['space'])}) for nemo-like tune"
    except AdviseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(advise_main(sys.argv[1:]))
