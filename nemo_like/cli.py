"""The ``nemo-like`` command: ``nemo-like finetune -c X.yaml [--a.b value ...]``."""

from __future__ import annotations

import sys

USAGE = """usage: nemo-like <command> [args]

commands:
  finetune -c X.yaml [--a.b value ...]   supervised fine-tuning (LoRA/DoRA with a peft section)
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
    print(f"nemo-like: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
