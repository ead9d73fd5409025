"""Train a causal LM on prompts and reward functions with GRPO (and Dr. GRPO, DAPO, GSPO) from a recipe YAML.

    python examples/llm_grpo/grpo.py --config recipes/smollm2_135m/grpo_arithmetic.yaml --grpo.beta 0.04
    torchrun --nproc-per-node=2 examples/llm_grpo/grpo.py --config ...
"""

import sys

from nemo_like.recipes.llm.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="recipes/smollm2_135m/grpo_arithmetic.yaml", method="grpo"))
