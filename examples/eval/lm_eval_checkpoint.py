"""Score a checkpoint with the LM Evaluation Harness (same as ``nemo-like eval``).

    python examples/eval/lm_eval_checkpoint.py --checkpoint checkpoints/quickstart/epoch_0_step_39 \
        --tasks nemo_like_quickstart --limit 50
    python examples/eval/lm_eval_checkpoint.py --checkpoint checkpoints/quickstart/epoch_0_step_39 \
        --use-adapter --tasks nemo_like_quickstart        # base + LoRA adapter instead of the merged model

Results go to ``lm_eval_results.json`` in the step directory (``lm_eval_results_peft.json`` for
the adapter); the table is printed.
"""

import sys

from nemo_like.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:], prog="lm_eval_checkpoint.py"))
