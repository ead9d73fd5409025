"""Read a few answers from a checkpoint: greedy, chat template applied (same as ``nemo-like generate``).

    python examples/eval/generate.py --checkpoint checkpoints/quickstart/epoch_0_step_39 \
        --prompt "Which is the largest: 12, 87, 45?"
    python examples/eval/generate.py --checkpoint checkpoints/quickstart/epoch_0_step_39 \
        --prompts-file data/quickstart/test.jsonl --limit 5
"""

import sys

from nemo_like.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main(sys.argv[1:], prog="generate.py"))
