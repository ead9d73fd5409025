"""Vision-language SFT: conversations with images, loss on the assistant's answers only, on the recipe base.

The step is the SFT step (forward with every batch field the model takes, masked cross-entropy
over the step's label tokens); what differs is set-up: a processor beside the model, image-text
datasets collated by the processor, and parts of the model frozen (``freeze_config``) with LoRA
kept on the language model unless the ``peft`` section says where.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.recipes.builders.data import build_dataloader, instantiate_dataset
from nemo_like.recipes.builders.processor import build_processor
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction
from nemo_like.recipes.vlm.vlm_config import check_vlm_config

logger = logging.getLogger("nemo_like")



class FinetuneRecipeForVLM(TrainFinetuneRecipeForNextTokenPrediction):
    """SFT of an image-text-to-text model; the training step and validation are the SFT recipe's."""

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg, check_vlm_config(cfg))  # every section typed and checked before anything loads

    def setup(self) -> None:
        cfg, sections = self.cfg, self.sections
        self.setup_run()
        self.model_id = cfg.get("model.pretrained_model_name_or_path")
        self.processor = build_processor(cfg, self.model_id)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError("processor: it has no tokenizer; a vision-language model's processor must bring one")
        # Data before the model: a bad row stops the run in seconds.
        self.dataset = instantiate_dataset(cfg.dataset, processor=self.processor)
        self.val_dataset = (instantiate_dataset(cfg.validation_dataset, processor=self.processor)
                            if "validation_dataset" in cfg else None)
        sched = vars(sections.step_scheduler)
        self.dataloader = self._loader("dataloader", self.dataset, sched["local_batch_size"], train=True)
        self.val_dataloader = (self._loader("validation_dataloader", self.val_dataset, sched["local_batch_size"],
                                            train=False) if self.val_dataset is not None else None)
        self.step_scheduler = StepScheduler(**sched, dp_size=self.dist.dp_size, dataloader=self.dataloader)

        self._setup_model_and_step(prepare=self._freeze_and_target)
        self.setup_observers()

    def _loader(self, name: str, dataset: Any, batch_size: int, train: bool) -> Any:
        return build_dataloader(self.cfg.get(name), dataset, batch_size, train=train, tokenizer=self.tokenizer,
                                dist=self.dist, seed=self.rng.seed, ranked=bool(getattr(self.rng, "ranked", False)),
                                name=name, processor=self.processor, default_collate=_default_collate())

    def _freeze_and_target(self, model: torch.nn.Module, peft_config: Any) -> Any:
        """``freeze_config`` applied; LoRA without ``exclude_modules`` adapts the language model's layers only
        (its targets there: ``target_modules``, ``match_all_linear`` or ``*_proj``), never the vision tower,
        the projector or the output layer."""
        from nemo_like.components.models.vlm_parts import apply_freeze_config, language_model_lora_excludes

        freeze = self.sections.freeze_config
        apply_freeze_config(model, freeze_vision_tower=freeze.freeze_vision_tower,
                            freeze_embeddings=freeze.freeze_embeddings,
                            freeze_language_model=freeze.freeze_language_model)
        if peft_config is not None and not peft_config.exclude_modules:
            peft_config.exclude_modules = language_model_lora_excludes(model)
            logger.info("LoRA on the language model only (excluded: %s)", ", ".join(peft_config.exclude_modules))
        return peft_config

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inputs on the device, images in the model's dtype (processors return float32 pixels)."""
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in batch.items()}

    def checkpoint_state(self) -> dict[str, Any]:
        """The SFT parts; the consolidated directory gets the processor (tokenizer, image processor, chat template)."""
        state = super().checkpoint_state()
        state["model"].tokenizer = self.processor
        return state


def _default_collate() -> Any:
    from nemo_like.components.datasets.vlm.collate_fns import default_collate_fn

    return default_collate_fn
