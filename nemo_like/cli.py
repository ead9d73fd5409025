"""The ``nemo-like`` command: fine-tune, evaluate, plot, merge and try out models from one entry point."""

from __future__ import annotations

import os
import sys

from nemo_like.config.errors import ConfigError  # light: the commands check their arguments before torch loads

USAGE = """usage: nemo-like <command> [args]

commands:
  finetune -c X.yaml [--a.b value ...] [--nproc-per-node N]
                                         supervised fine-tuning (LoRA/DoRA with a peft section);
                                         an image-text model's config runs vision-language SFT;
                                         --nproc-per-node N > 1 hands the run to torchrun
  dpo -c X.yaml [--a.b value ...] [--nproc-per-node N]
                                         preference tuning (DPO, IPO, SimPO, ...) on prompt/chosen/
                                         rejected pairs
  grpo -c X.yaml [--a.b value ...] [--nproc-per-node N]
                                         reinforcement learning from verifiable rewards (GRPO,
                                         Dr. GRPO, DAPO, GSPO) on prompts and reward functions
  tune -c tune.yaml [--tuning.n_trials N ...]
                                         hyperparameter search (Optuna) over any recipe: trials as
                                         processes, pruning, trials_results.csv, the best YAML
  advise --dataset FILE --method M | --run CHECKPOINT_DIR [--tune OUT.yaml]
                                         starting values for a data set's size, or a diagnosis of a
                                         run's loss curves, with the overrides to try next
  eval --checkpoint DIR --tasks T[,T2] [--limit N] [--use-adapter | --peft ADAPTER]
                                         score a checkpoint with lm-eval; results JSON beside it
  plot RUN_DIR [RUN_DIR ...] [--out DIR] train/validation loss and learning rate against step;
                                         several runs: a sweep plot and the step x run table
  generate --checkpoint DIR --prompt TEXT [--prompt TEXT ...]
                                         greedy answers with the chat template, for a quick look
  merge-lora --adapter DIR --output DIR [--base ID] [--dtype D]
                                         fold a saved adapter into its base: one plain HF model dir
  recipes                                the shipped recipes: path, method, what each does
  config-fields SECTION [--method M]     a section's fields with their types and defaults
  dry-run -c X.yaml [--world-size N] [--a.b value ...]
                                         a multi-GPU recipe's mesh and rank 0's shards on the meta
                                         device: no GPUs, no weights

Run `nemo-like <command> --help` for a command's options; `finetune|dpo|grpo -c X.yaml --print-config`
prints the resolved config (overrides applied, secrets redacted) and exits.
"""

COMMANDS = ("finetune", "dpo", "grpo", "tune", "advise", "eval", "plot", "generate", "merge-lora", "dry-run",
            "recipes", "config-fields")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "finetune":
        return finetune_main(rest)
    if command in ("dpo", "grpo"):
        return finetune_main(rest, method=command)
    if command == "tune":
        from nemo_like.cli_tune import tune_main

        return tune_main(rest)
    if command == "advise":
        from nemo_like.cli_advise import advise_main

        return advise_main(rest)
    if command in ("recipes", "config-fields"):
        from nemo_like.cli_info import config_fields_main, recipes_main

        return recipes_main(rest) if command == "recipes" else config_fields_main(rest)
    if command == "eval":
        return eval_main(rest)
    if command == "plot":
        return plot_main(rest)
    if command == "generate":
        return generate_main(rest)
    if command == "merge-lora":
        return merge_lora_main(rest)
    if command == "dry-run":
        return dry_run_main(rest)
    print(f"nemo-like: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def _quiet_libraries() -> None:
    """Our lines only, as in finetune: no per-file progress bars or library chatter."""
    import logging

    import transformers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _pop_count(argv: list[str], names: tuple[str, ...], what: str) -> tuple[int | None, list[str]]:
    """Take ``--name N`` / ``--name=N`` (any of ``names``) out of the recipe's overrides; None when absent."""
    rest: list[str] = []
    count = None
    i = 0
    while i < len(argv):
        name, has_eq, value = argv[i].partition("=")
        if name in names:
            if not has_eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name}: expects a number of {what}")
                value = argv[i + 1]
                i += 1
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{name}: {value!r} is not a positive number of {what}")
            count = int(value)
        else:
            rest.append(argv[i])
        i += 1
    return count, rest


def finetune_main(argv: list[str], method: str = "sft") -> int:
    """Run the method's recipe here, or under torchrun with N processes on this node."""
    command = "finetune" if method == "sft" else method
    if argv and argv[0] in ("-h", "--help"):
        from nemo_like.config.arg_parser import USAGE as OVERRIDES

        example = {"finetune": "recipes/smollm2_135m/sft_lora.yaml --optimizer.lr 1e-4",
                   "dpo": "recipes/smollm2_135m/dpo_lora.yaml --dpo.beta 0.2",
                   "grpo": "recipes/smollm2_135m/grpo_arithmetic.yaml --grpo.num_generations 4"}[command]
        print(f"usage: nemo-like {command} -c RECIPE.yaml [--section.key VALUE ...] [--nproc-per-node N] "
              f"[--print-config]\n" + OVERRIDES.split("\n", 1)[1]
              + f"\n  --print-config  print the resolved config (overrides applied, secrets redacted) and exit\n"
              f"\nexample:\n  nemo-like {command} -c {example}")
        return 0
    if "--print-config" in argv:
        return _print_config([a for a in argv if a != "--print-config"], method)
    try:
        nproc, rest = _pop_count(argv, ("--nproc-per-node", "--nproc_per_node"), "processes")
        nproc = nproc or 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess

        import importlib

        from nemo_like.recipes.llm.run import METHODS, load_method_config

        try:  # a mistake is reported once, here, not by each of the N processes
            checked, cfg = load_method_config(rest, None, method)
            config_module, _, check_name = METHODS[checked][:3]
            getattr(importlib.import_module(config_module), check_name)(cfg, nproc)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "nemo_like.cli", command, *rest]
        return subprocess.call(cmd)
    from nemo_like.recipes.llm.run import main as run_method

    return run_method(rest, method=method)


def _print_config(argv: list[str], method: str) -> int:
    """The config as the run would see it (checked first), credentials and environment values as ``***``."""
    import importlib

    import yaml

    from nemo_like.config.secrets import redact_config
    from nemo_like.recipes.llm.run import METHODS, load_method_config

    try:
        _, rest = _pop_count(argv, ("--nproc-per-node", "--nproc_per_node"), "processes")
        checked, cfg = load_method_config(rest, None, method)
        config_module, _, check_name = METHODS[checked][:3]
        getattr(importlib.import_module(config_module), check_name)(cfg, 1)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"# {checked} recipe; resolved config", flush=True)
    print(yaml.safe_dump(redact_config(cfg), sort_keys=False, default_flow_style=False), end="")
    return 0


def eval_main(argv: list[str] | None = None, prog: str = "nemo-like eval") -> int:
    """Score a checkpoint with lm-eval, print the table, write the results JSON beside the checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Evaluate a checkpoint with the LM Evaluation Harness.",
                                     epilog="example:\n  nemo-like eval --checkpoint checkpoints/quickstart --tasks nemo_like_quickstart",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run dir, step dir, model dir, consolidated dir, adapter dir or model id")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks (project tasks: nemo_like_*)")
    parser.add_argument("--limit", type=float, default=None, help="first N documents per task (or a fraction < 1)")
    parser.add_argument("--batch-size", default="8", help="generation batch size, or 'auto'")
    parser.add_argument("--use-adapter", action="store_true", help="score a step's base + adapter, not its merged model")
    parser.add_argument("--peft", default=None, help="adapter dir to apply on --checkpoint (default base: the adapter's)")
    parser.add_argument("--base", default=None, help="base model for an adapter (default: from adapter_config.json)")
    parser.add_argument("--include-path", action="append", default=None, help="extra folder of task YAMLs")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--no-chat-template", action="store_true", help="send prompts as plain text")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--output", default=None, help="results file or folder (default: beside the checkpoint)")
    parser.add_argument("--log-samples", action="store_true", help="also write each prompt and answer (.samples.jsonl)")
    args = parser.parse_args(argv)
    _quiet_libraries()
    from nemo_like.components.eval.lm_eval_harness import evaluate_checkpoint, format_table

    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    try:
        out = evaluate_checkpoint(
            args.checkpoint, args.tasks, limit=limit, batch_size=batch_size, peft=args.peft,
            use_adapter=args.use_adapter, base=args.base, output=args.output, include_path=args.include_path,
            num_fewshot=args.num_fewshot, apply_chat_template=not args.no_chat_template, device=args.device,
            dtype=args.dtype, log_samples=args.log_samples,
        )
    except (ValueError, OSError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(out["results"]))
    print(f"results: {out['path']}" + (f"\nsamples: {out['samples_path']}" if out.get("samples_path") else ""))
    return 0


def plot_main(argv: list[str] | None = None, prog: str = "nemo-like plot") -> int:
    """One run: loss_curves.png/.json in the run dir. Several: sweep.png/.json/.md and the table printed."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Plot loss curves of a run, or compare runs.",
                                     epilog="example:\n  nemo-like plot checkpoints/lr_1e-4 checkpoints/lr_3e-4 --out plots/",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (checkpoint.checkpoint_dir of each run)")
    parser.add_argument("--out", default=None, help="output folder (default: the run dir; for a sweep: ./sweep)")
    parser.add_argument("--labels", default=None, help="comma-separated run labels (default: what differs, e.g. LR=1e-5)")
    parser.add_argument("--sweep", action="store_true", help="sweep output even for a single run")
    args = parser.parse_args(argv)
    from nemo_like.components.plotting import plot_run, plot_sweep

    try:
        if len(args.runs) == 1 and not args.sweep:
            out = plot_run(args.runs[0], out_dir=args.out)
            curves = out["series"]
            if curves["val_loss"]:
                step, best = min(curves["val_loss"], key=lambda sv: sv[1])
                print(f"lowest validation loss {best:.4f} at step {int(step)}")
        else:
            labels = args.labels.split(",") if args.labels else None
            out = plot_sweep(args.runs, out_dir=args.out or "sweep", labels=labels)
            print(out["table"])
    except (ValueError, OSError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"plot: {out['png']}\ndata: {out['data']}")
    return 0


def generate_main(argv: list[str] | None = None, prog: str = "nemo-like generate") -> int:
    """Greedy answers to a few prompts from any checkpoint, with the chat template applied."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Answer prompts greedily with a checkpoint.",
                                     epilog="example:\n  nemo-like generate --checkpoint checkpoints/quickstart --prompt \"Largest of 3, 9, 4?\"",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run dir, step dir, model dir, consolidated dir, adapter dir or model id")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="JSONL rows with a question column, or one prompt a line")
    parser.add_argument("--column", default="question", help="column of --prompts-file rows to use")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--use-adapter", action="store_true")
    parser.add_argument("--peft", default=None)
    parser.add_argument("--base", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--system", default=None, help="a system turn to put before each prompt")
    parser.add_argument("--no-chat-template", action="store_true")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    try:
        prompts = list(args.prompt) + _read_prompts(args.prompts_file, args.column)
        prompts = prompts[: args.limit] if args.limit else prompts
        if not prompts:
            raise ValueError("generate: give --prompt TEXT or --prompts-file FILE")
        _quiet_libraries()
        from nemo_like.components.eval.generate import generate, load_for_generation

        model, tokenizer = load_for_generation(args.checkpoint, peft=args.peft, use_adapter=args.use_adapter,
                                               base=args.base, dtype=args.dtype)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    answers = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                       use_chat_template=not args.no_chat_template, system=args.system)
    for prompt, answer in zip(prompts, answers):
        print(f"### prompt\n{prompt}\n### answer\n{answer}\n")
    return 0


def _read_prompts(path: str | None, column: str) -> list[str]:
    import json

    if path is None:
        return []
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            if not line.startswith("{"):
                prompts.append(line)
                continue
            row = json.loads(line)
            if column not in row:
                raise ValueError(f"{path}: row {number} has no '{column}' column (has: {', '.join(row)})")
            prompts.append(str(row[column]))
    return prompts


def merge_lora_main(argv: list[str] | None = None, prog: str = "nemo-like merge-lora") -> int:
    """Parse the merge options and run the merge; user mistakes end as one ``error:`` line."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Merge a LoRA/DoRA adapter into its base model.",
                                     epilog="example:\n  nemo-like merge-lora --adapter checkpoints/lora/LATEST/model --output merged/",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="adapter dir (or a step checkpoint holding model/)")
    parser.add_argument("--output", required=True, help="where to write the merged transformers model")
    parser.add_argument("--base", default=None, help="base model id or path (default: from adapter_config.json)")
    parser.add_argument("--dtype", default="auto", help="auto (the base's dtype), float32, bfloat16 or float16")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    _quiet_libraries()
    from nemo_like.components._peft.merge import merge_lora_checkpoint

    try:
        out = merge_lora_checkpoint(args.adapter, base_model=args.base, output_dir=args.output, dtype=args.dtype)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def dry_run_main(argv: list[str] | None = None, prog: str = "nemo-like dry-run") -> int:
    """Shard a recipe's model for its ranks on the meta device and print rank 0's share; a mistake is one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        from nemo_like.config.arg_parser import USAGE as OVERRIDES

        print(f"usage: {prog} -c RECIPE.yaml [--world-size N] [--section.key VALUE ...]\n"
              "  --world-size N: ranks to simulate (default: dp_size x tp_size x cp_size of the recipe)\n"
              + OVERRIDES.split("\n", 1)[1]
              + "\nexample:\n  nemo-like dry-run -c recipes/llama3_8b/sft_tp2_fsdp4.yaml")
        return 0
    from nemo_like.config.arg_parser import parse_args_and_load_config
    from nemo_like.recipes.llm.sft_config import SFT_SCHEMA

    try:
        world_size, rest = _pop_count(argv, ("--world-size", "--world_size", "--nproc"), "ranks")
        cfg = parse_args_and_load_config(rest, known_sections=SFT_SCHEMA.override_names)
        from nemo_like.components.distributed.dry_run import format_report
        from nemo_like.recipes.llm.dry_run import dry_run_recipe

        print(format_report(dry_run_recipe(cfg, world_size)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
