"""The ``nemo-like`` command: ``nemo-like finetune -c X.yaml [--a.b value ...]``, ``nemo-like merge-lora ...``."""

from __future__ import annotations

import sys

USAGE = """usage: nemo-like <command> [args]

commands:
  finetune -c X.yaml [--a.b value ...]   supervised fine-tuning (LoRA/DoRA with a peft section)
  merge-lora --adapter DIR --output DIR [--base ID] [--dtype D]
                                         fold a saved adapter into its base: one plain HF model dir
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "finetune":
        from nemo_like.recipes.llm.run import main as finetune

        return finetune(rest)
    if command == "merge-lora":
        return merge_lora_main(rest)
    print(f"nemo-like: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def merge_lora_main(argv: list[str] | None = None, prog: str = "nemo-like merge-lora") -> int:
    """Parse the merge options and run the merge; user mistakes end as one ``error:`` line."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Merge a LoRA/DoRA adapter into its base model.")
    parser.add_argument("--adapter", required=True, help="adapter dir (or a step checkpoint holding model/)")
    parser.add_argument("--output", required=True, help="where to write the merged transformers model")
    parser.add_argument("--base", default=None, help="base model id or path (default: from adapter_config.json)")
    parser.add_argument("--dtype", default="auto", help="auto (the base's dtype), float32, bfloat16 or float16")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import logging

    import transformers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers.utils.logging.disable_progress_bar()  # our one summary line, as in finetune
    transformers.utils.logging.set_verbosity_error()
    from nemo_like.components._peft.merge import merge_lora_checkpoint

    try:
        out = merge_lora_checkpoint(args.adapter, base_model=args.base, output_dir=args.output, dtype=args.dtype)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
