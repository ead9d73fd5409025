"""Merge a LoRA/DoRA adapter saved by a PEFT run into its base model (same as ``nemo-like merge-lora``).

    python examples/llm_finetune/merge_lora.py --adapter checkpoints/epoch_0_step_99/model --output merged/
    python examples/llm_finetune/merge_lora.py --adapter checkpoints/ --output merged/ --base path/to/base

``--adapter`` may be the adapter directory, a step checkpoint, or the checkpoint root
(its ``LATEST`` step is used).
"""

import sys

from nemo_like.cli import merge_lora_main

if __name__ == "__main__":
    sys.exit(merge_lora_main(prog="merge_lora.py"))
