"""Fine-tune a causal LM from a recipe YAML.

    python examples/llm_finetune/finetune.py --config recipes/smollm2_135m/sft_quickstart.yaml --optimizer.lr 1e-5
    torchrun --nproc-per-node=1 examples/llm_finetune/finetune.py --config ...
"""

import sys

from nemo_like.recipes.llm.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="recipes/smollm2_135m/sft_quickstart.yaml"))
