"""Preference-tune a causal LM (DPO and its kin) from a recipe YAML.

    python examples/llm_dpo/dpo.py --config recipes/smollm2_135m/dpo_lora.yaml --dpo.beta 0.2
    torchrun --nproc-per-node=2 examples/llm_dpo/dpo.py --config ...
"""

import sys

from nemo_like.recipes.llm.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="recipes/smollm2_135m/dpo_lora.yaml", method="dpo"))
