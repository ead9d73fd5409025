"""Oumi's ``tuning:`` field names, read as this library's: an Oumi tune YAML runs after its recipe part
is written in NAM's sections.

Oumi names its training and PEFT knobs after Hugging Face's TrainingArguments and LoraConfig
(``learning_rate``, ``lora_r``); here each becomes the override path it means (``optimizer.lr``,
``peft.dim``). A name with a dot is already a path and passes through. A knob that has no single
path here (``gradient_accumulation_steps``, ``optimizer`` names) is refused with the path to use.
"""

from __future__ import annotations

from typing import Any

from nemo_like.config.errors import ConfigError, did_you_mean

TRAINING_PATHS: dict[str, str] = {
    "learning_rate": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "adam_beta1": "optimizer.betas.0",
    "adam_beta2": "optimizer.betas.1",
    "adam_epsilon": "optimizer.eps",
    "per_device_train_batch_size": "step_scheduler.local_batch_size",
    "per_device_eval_batch_size": "validation_dataloader.batch_size",
    "max_steps": "step_scheduler.max_steps",
    "num_train_epochs": "step_scheduler.num_epochs",
    "eval_steps": "step_scheduler.val_every_steps",
    "save_steps": "step_scheduler.ckpt_every_steps",
    "warmup_steps": "lr_scheduler.lr_warmup_steps",
    "lr_scheduler_type": "lr_scheduler.lr_decay_style",
    "max_grad_norm": "clip_grad_norm.max_norm",
    "seed": "rng.seed",
}

PEFT_PATHS: dict[str, str] = {
    "lora_r": "peft.dim",
    "lora_alpha": "peft.alpha",
    "lora_dropout": "peft.dropout",
    "lora_target_modules": "peft.target_modules",
    "use_dora": "peft.use_dora",
}

# Oumi metric names -> the names the runs here log.
METRICS: dict[str, str] = {"eval_loss": "val_loss", "loss": "train_loss", "train_loss": "train_loss"}

# trainer_type -> the method that runs it.
TRAINER_METHODS: dict[str, str] = {"TRL_SFT": "sft", "HF": "sft", "OUMI": "sft", "TRL_DPO": "dpo", "TRL_GRPO": "grpo"}

_REFUSED: dict[str, str] = {
    "gradient_accumulation_steps": "set step_scheduler.global_batch_size (= local_batch_size x accumulation x ranks)",
    "optimizer": "search optimizer._target_ with a categorical of import paths (e.g. torch.optim.AdamW)",
    "warmup_ratio": "search lr_scheduler.lr_warmup_steps (a number of steps)",
    "q_lora": "add a quantization section to the recipe (see recipes/smollm2_135m/sft_qlora.yaml)",
}


def oumi_path(name: str, table: dict[str, str], where: str) -> str:
    """The override path of an Oumi parameter name (a dotted name is a path already)."""
    if "." in name:
        return name
    if name in table:
        return table[name]
    if name in _REFUSED:
        raise ConfigError(f"{where}: '{name}' has no single setting here; {_REFUSED[name]}")
    hint = did_you_mean(name, sorted(table))
    raise ConfigError(f"{where}: '{name}' is not an Oumi parameter this library maps{hint}; "
                      f"known: {', '.join(sorted(table))}, or write the override path (e.g. optimizer.lr)")


def fixed_overrides(section: Any, table: dict[str, str], where: str) -> tuple[dict[str, Any], str | None]:
    """``fixed_*_params`` as override paths, and the method a ``trainer_type`` names (None when absent)."""
    overrides: dict[str, Any] = {}
    method = None
    for name, value in (section or {}).items():
        key = f"{where}.{name}"
        if name == "trainer_type":
            if value not in TRAINER_METHODS:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(TRAINER_METHODS)}")
            method = TRAINER_METHODS[value]
        elif name == "q_lora" and not value:
            continue
        else:
            overrides[oumi_path(str(name), table, key)] = value.to_dict() if hasattr(value, "to_dict") else value
    return overrides, method


def objectives(metrics: Any, directions: Any, where: str) -> list[dict[str, str]]:
    """``evaluation_metrics`` + ``evaluation_direction`` as ``objectives`` entries; ``where`` names the directions."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    directions = [directions] if isinstance(directions, str) else list(directions or [])
    if not directions:
        directions = ["minimize"] * len(metrics)
    if len(directions) != len(metrics):
        raise ConfigError(f"{where}: {len(directions)} directions for {len(metrics)} "
                          "evaluation_metrics; give one each")
    return [{"metric": METRICS.get(str(m), str(m)), "direction": str(d)} for m, d in zip(metrics, directions)]
