"""The ``neftune`` and ``qat`` sections as the parts that change how the model trains, not what it is.

Both act on the built model before the optimizer is made: NEFTune hooks its input embeddings,
QAT swaps its linears for fake-quantized ones (the same weights, so the optimizer and the
checkpoints see the plain model). ``before_step`` is the one thing the training loop calls.

What a checkpoint holds: with NEFTune, exactly the plain model (a hook is no weight). With QAT,
the floating-point weights trained under fake quantization, under the model's own names (so
``model/consolidated/`` loads with ``AutoModelForCausalLM.from_pretrained``), and ``config.yaml``
with the ``qat:`` section; ``components.quantization.qat.convert_qat_model`` with that
``QATConfig`` gives the quantized model, whose outputs equal the fake-quantized forward's.
QAT runs on a single process (the linears must be swapped before sharding) and not with LoRA,
QLoRA or the fused linear cross-entropy, each refused with a one-line error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.config.typed_sections import check_target_arguments, located

logger = logging.getLogger("nemo_like")

__all__ = ["TrainingFeatures", "build_training_features"]

_QAT_CONFIG_TARGET = "nemo_like.components.quantization.qat.QATConfig"


@dataclass
class TrainingFeatures:
    """NEFTune and QAT as built for this run (None when off)."""

    neftune: Any = None  # components.training.neftune.NEFTune
    qat_config: Any = None  # components.quantization.qat.QATConfig
    fake_quant: Any = None  # components.quantization.qat.FakeQuantSchedule

    def before_step(self, step: int) -> None:
        """Per-step switches: QAT fake quantization on once ``fake_quant_after_n_steps`` steps have run."""
        if self.fake_quant is not None:
            self.fake_quant.before_step(step)


def build_training_features(cfg: ConfigNode, sections: Any, model: torch.nn.Module, world_size: int) -> TrainingFeatures:
    """QAT (prepared in place) and NEFTune (hooked) on ``model`` as ``sections.qat`` / ``sections.neftune`` say."""
    features = TrainingFeatures()
    qat = getattr(sections, "qat", None)
    if qat is not None and not qat.enabled:
        logger.info("qat: enabled is false; training without fake quantization")
    elif qat is not None:
        features.qat_config, features.fake_quant = _prepare_qat(cfg, qat, model, world_size)
    neftune = getattr(sections, "neftune", None)
    if neftune is not None:
        from nemo_like.components.training.neftune import NEFTune

        features.neftune = NEFTune(noise_alpha=neftune.noise_alpha)
        try:
            features.neftune.activate(model)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    return features


def _prepare_qat(cfg: ConfigNode, qat: Any, model: torch.nn.Module, world_size: int) -> tuple[Any, Any]:
    """Build the ``qat_config``, refuse what QAT cannot be combined with, swap the linears, schedule the rounding."""
    from nemo_like.components.quantization.qat import FakeQuantSchedule, QATConfig, prepare_qat_model

    for section, why in (("peft", "QAT trains all weights; it cannot be combined with LoRA adapters"),
                         ("quantization", "QAT trains floating-point weights; it cannot start from a 4-bit base")):
        if section in cfg:
            raise ConfigError(f"qat: {why} (remove the {section} section or set qat.enabled: false)")
    if str(cfg.get("loss_fn._target_", "")).endswith("FusedLinearCrossEntropy"):
        raise ConfigError("qat: the fused linear cross-entropy reads lm_head's weight directly, past its fake "
                          "quantization; use MaskedCrossEntropy or ChunkedCrossEntropy with QAT")
    if world_size > 1:
        raise ConfigError("qat: runs as a single process for now (the linears must be swapped before the model is "
                          "sharded); launch one process or set qat.enabled: false")
    node = cfg.qat.qat_config
    target = node.get("_target_")
    if target != _QAT_CONFIG_TARGET:  # the one class this section builds: nothing else from the YAML is imported
        raise ConfigError(f"{located('qat.qat_config._target_', cfg.sources)}: expected {_QAT_CONFIG_TARGET}, "
                          f"got {target!r}")
    check_target_arguments(node, "qat.qat_config", cfg.sources)  # a misspelled argument is named, with the file line
    try:
        config = QATConfig(**{str(k): v for k, v in node.to_dict().items() if k != "_target_"})
        prepare_qat_model(model, config)
    except (ValueError, ImportError) as err:
        raise ConfigError(str(err)) from err
    schedule = FakeQuantSchedule(model, qat.fake_quant_after_n_steps)
    if schedule.after_n_steps:
        logger.info("QAT fake quantization off for the first %d steps", schedule.after_n_steps)
    return config, schedule
