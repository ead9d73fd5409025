"""Quantization-aware training (QAT) with torchao: train through int4/int8 rounding, then quantize.

Why: a model quantized after training loses accuracy to rounding it never saw. QAT swaps each
``nn.Linear`` for torchao's ``FakeQuantizedLinear``, which rounds its weights (and, for
``int8_dynact_int4weight``, its input activations) to the target integer grid in the forward and
passes gradients straight through; the weights themselves stay in floating point and keep their
names, so the optimizer, the checkpoints and resume see the plain model.

Schemes (``quantizer_type``), each torchao's intx scheme, which runs on CPU as well as GPU:
- ``int8_dynact_int4weight``: weights int4, symmetric, one scale per ``groupsize`` input columns;
  activations int8, asymmetric, per token, quantized on the fly (torchao's
  ``Int8DynamicActivationIntxWeightConfig``; the "8da4w" scheme of ExecuTorch and torchtune).
- ``int4_weight_only``: the same int4 weights, activations left in floating point
  (``IntxWeightOnlyConfig``).
A linear whose ``in_features`` is not a multiple of ``groupsize`` stays in floating point (it is
logged); pick a ``groupsize`` that divides the model's hidden and intermediate sizes.

What a checkpoint holds: the floating-point weights trained under fake quantization, under the
model's own names (``model/consolidated/`` loads with ``AutoModelForCausalLM.from_pretrained``),
and the run's ``config.yaml`` with its ``qat:`` section. ``convert_qat_model(model, QATConfig(...))``
turns such a model into the real quantized one (int weights with their scales), whose outputs
are those of the fake-quantized training forward. Converting is a separate step because the
quantized tensors are torchao subclasses that Hugging Face checkpoints do not hold.

torchao is optional: ``pip install 'nemo_like[qat]'``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from torch import nn

logger = logging.getLogger("nemo_like")

__all__ = ["QATConfig", "FakeQuantSchedule", "convert_qat_model", "prepare_qat_model", "set_fake_quant"]

QUANTIZER_TYPES = ("int8_dynact_int4weight", "int4_weight_only")


def _torchao() -> Any:
    """torchao's quantization API, or an error naming the extra to install."""
    try:
        import torchao.quantization as quantization
        import torchao.quantization.qat as qat
    except ImportError as err:
        raise ImportError("qat: needs torchao; install it with pip install 'nemo_like[qat]'") from err
    return quantization, qat


class QATConfig:
    """Which QAT scheme to train with: ``quantizer_type`` and the int4 weight ``groupsize``."""

    def __init__(self, quantizer_type: Literal["int8_dynact_int4weight", "int4_weight_only"] = "int8_dynact_int4weight",
                 groupsize: int = 256) -> None:
        if quantizer_type not in QUANTIZER_TYPES:
            raise ValueError(f"qat.qat_config.quantizer_type: {quantizer_type!r} is not one of {', '.join(QUANTIZER_TYPES)}")
        if isinstance(groupsize, bool) or not isinstance(groupsize, int) or groupsize < 1:
            raise ValueError(f"qat.qat_config.groupsize: must be a positive integer, got {groupsize!r}")
        self.quantizer_type = quantizer_type
        self.groupsize = groupsize

    def to_dict(self) -> dict[str, Any]:
        return {"quantizer_type": self.quantizer_type, "groupsize": self.groupsize}

    def __repr__(self) -> str:
        return f"QATConfig(quantizer_type={self.quantizer_type!r}, groupsize={self.groupsize})"

    def base_config(self) -> Any:
        """torchao's post-training config of this scheme; QAT derives its fake quantization from it."""
        import torch

        quantization, _ = _torchao()
        granularity = quantization.PerGroup(self.groupsize)
        if self.quantizer_type == "int8_dynact_int4weight":
            return quantization.Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                      weight_granularity=granularity)
        return quantization.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)

    def quantizes(self, module: nn.Module, name: str = "") -> bool:
        """Whether ``module`` is a linear this scheme fake-quantizes (its input width splits into groups)."""
        return type(module) is nn.Linear and module.in_features % self.groupsize == 0


def prepare_qat_model(model: nn.Module, config: QATConfig) -> int:
    """Swap the model's linears for fake-quantized ones, in place; returns how many were swapped.

    Weights stay the same ``Parameter`` objects (tied weights stay tied); no state-dict key changes.
    """
    quantization, qat = _torchao()
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    swapped = [name for name, m in model.named_modules() if config.quantizes(m)]
    if not swapped:
        raise ValueError(f"qat.qat_config.groupsize: {config.groupsize} divides the input width of none of the "
                         f"model's {len(linears)} linear layers; nothing would be quantized")
    quantization.quantize_(model, qat.QATConfig(config.base_config(), step="prepare"), filter_fn=config.quantizes)
    left = sorted(set(linears) - set(swapped))
    logger.info("QAT (%s, groupsize %d): %d linear layers fake-quantized%s", config.quantizer_type, config.groupsize,
                len(swapped), f"; {len(left)} left in floating point (input width not a multiple of the "
                              f"groupsize): {', '.join(left[:4])}{' ...' if len(left) > 4 else ''}" if left else "")
    return len(swapped)


def set_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Turn the rounding of every fake-quantized linear on or off; returns how many were set."""
    _, qat = _torchao()
    count = 0
    for module in model.modules():
        if isinstance(module, qat.FakeQuantizedLinear):
            for quantizer in (module.activation_fake_quantizer, module.weight_fake_quantizer):
                if quantizer is not None:
                    quantizer.enabled = enabled
            count += 1
    return count


def convert_qat_model(model: nn.Module, config: QATConfig) -> nn.Module:
    """The real quantized model, in place: int weights with their scales, as ``config`` says.

    Takes the prepared training model, or the floating-point model loaded from a QAT checkpoint
    (it is prepared first, so the same linears are quantized as in training).
    """
    quantization, qat = _torchao()
    if not any(isinstance(m, qat.FakeQuantizedLinear) for m in model.modules()):
        prepare_qat_model(model, config)
    quantization.quantize_(model, qat.QATConfig(config.base_config(), step="convert"),
                           filter_fn=lambda m, name: isinstance(m, qat.FakeQuantizedLinear))
    return model


class FakeQuantSchedule:
    """Fake quantization off for the first ``after_n_steps`` optimizer steps, on from then.

    Why delay: a few float steps first let the fine-tune move before rounding noise joins in. The
    state follows from the step index alone, so a resumed run needs nothing saved.
    """

    def __init__(self, model: nn.Module, after_n_steps: int | None) -> None:
        if after_n_steps is not None and (isinstance(after_n_steps, bool) or after_n_steps < 0):
            raise ValueError(f"qat.fake_quant_after_n_steps: must be >= 0 or none, got {after_n_steps!r}")
        self.model = model
        self.after_n_steps = after_n_steps or 0
        self.enabled: bool | None = None  # unknown until the first step

    def before_step(self, step: int) -> None:
        """Set fake quantization for the optimizer step ``step`` (0-based) about to run."""
        enabled = step >= self.after_n_steps
        if enabled != self.enabled:
            set_fake_quant(self.model, enabled)
            if enabled and self.after_n_steps:
                logger.info("QAT fake quantization on from step %d", step)
            self.enabled = enabled
