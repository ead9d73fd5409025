"""Fine-tune a vision-language model on image-text conversations from a recipe YAML.

    python examples/vlm_finetune/finetune.py --config recipes/tiny_vlm/sft_shapes.yaml --optimizer.lr 1e-4
    torchrun --nproc-per-node=2 examples/vlm_finetune/finetune.py --config ...
"""

import sys

from nemo_like.recipes.llm.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="recipes/tiny_vlm/sft_shapes.yaml", method="vlm"))
