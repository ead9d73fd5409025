"""Pretrain a causal LM from random initialisation (a model built from its config) on plain text.

    python examples/llm_pretrain/pretrain.py --config recipes/smollm2_135m/pretrain_scratch_text.yaml
    torchrun --nproc-per-node=8 examples/llm_pretrain/pretrain.py --config ... --step_scheduler.max_steps 1000

The same recipe as fine-tuning (nemo_like/recipes/llm/train_ft.py, on the recipe base): every token of a
text block is a target, and the model section names ``NeMoAutoModelForCausalLM.from_config``.
"""

import sys

from nemo_like.recipes.llm.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="recipes/smollm2_135m/pretrain_scratch_text.yaml"))
