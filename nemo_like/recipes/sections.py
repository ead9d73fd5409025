"""The plain (not ``_target_``-built) recipe sections every training method shares, as typed dataclasses.

They import nothing heavy: ``check_section`` fills them from the YAML before torch loads, so a
typo or a wrong type is reported at once, and the training loop reads these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nemo_like.config.errors import ConfigError

__all__ = [
    "AutocastSection", "ClipGradNormSection", "CompileSection", "DistEnvSection", "FP8Section", "GenerationEvalSection", "LRSchedulerSection",
    "PackedSequenceSection", "StepSchedulerSection", "NEFTuneSection", "QATSection",
]


def _positive(section: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"{section}.{name}: must be a positive integer, got {value!r}")


@dataclass
class StepSchedulerSection:
    """``step_scheduler``: batch layout and when to stop, validate and save (steps count optimizer steps)."""

    global_batch_size: int
    local_batch_size: int
    max_steps: int | None = None
    num_epochs: int | None = None
    ckpt_every_steps: int | None = None
    val_every_steps: int | None = None
    save_checkpoint_every_epoch: bool = True  # also save when an epoch ends
    gc_every_steps: int | None = None  # a full gc.collect() every N steps (None: Python's own schedule)
    log_remote_every_steps: int | None = None  # W&B/MLflow/TensorBoard get every Nth step (None: each)
    # Signal(s) that finish the step, save and stop (a scheduler's preemption notice); none: no such signal.
    preemption_signal: str | int | list[str | int] | None = "SIGTERM"

    def __post_init__(self) -> None:
        _positive("step_scheduler", global_batch_size=self.global_batch_size, local_batch_size=self.local_batch_size,
                  max_steps=self.max_steps, num_epochs=self.num_epochs, ckpt_every_steps=self.ckpt_every_steps,
                  val_every_steps=self.val_every_steps, gc_every_steps=self.gc_every_steps,
                  log_remote_every_steps=self.log_remote_every_steps)
        if self.global_batch_size % self.local_batch_size:
            raise ConfigError(f"step_scheduler.global_batch_size: {self.global_batch_size} is not a multiple of "
                              f"step_scheduler.local_batch_size ({self.local_batch_size})")

    def check_layout(self, data_parallel_ranks: int) -> None:
        """Each optimizer step takes ``global / (local * ranks)`` micro-batches: it must be a whole number."""
        per_step = self.local_batch_size * data_parallel_ranks
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"step_scheduler.global_batch_size: {self.global_batch_size} is not a multiple of "
                f"step_scheduler.local_batch_size x data-parallel ranks = {self.local_batch_size} x "
                f"{data_parallel_ranks} = {per_step}"
            )


@dataclass
class LRSchedulerSection:
    """``lr_scheduler``: warmup then decay (see ``components/optim/scheduler.py``)."""

    lr_decay_style: Literal["cosine", "linear", "constant", "WSD", "inverse-square-root"] = "cosine"
    lr_warmup_steps: int | None = None
    lr_decay_steps: int | None = None
    min_lr: float | None = None
    init_lr: float | None = None
    wsd_decay_steps: int | None = None
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "exponential"
    start_weight_decay: float | None = None
    end_weight_decay: float | None = None
    weight_decay_incr_style: str | None = None
    start_wd: float | None = None
    end_wd: float | None = None
    wd_incr_steps: int | None = None
    wd_incr_style: str | None = None

    def __post_init__(self) -> None:
        for name in ("lr_warmup_steps", "lr_decay_steps", "wsd_decay_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"lr_scheduler.{name}: must be >= 0, got {value!r}")
        if self.min_lr is not None and self.min_lr < 0:
            raise ConfigError(f"lr_scheduler.min_lr: must be >= 0, got {self.min_lr!r}")
        style = self.wd_incr_style or self.weight_decay_incr_style
        if style is not None and style not in ("constant", "linear", "cosine"):
            raise ConfigError(f"lr_scheduler.wd_incr_style: expected constant, linear or cosine, got {style!r}")
        start = self.start_wd if self.start_wd is not None else self.start_weight_decay
        end = self.end_wd if self.end_wd is not None else self.end_weight_decay
        if start is not None and end is not None and start != end and style in (None, "constant"):
            raise ConfigError(f"lr_scheduler.wd_incr_style: weight decay goes from start_wd {start} to end_wd {end}, "
                              "so give wd_incr_style: linear or cosine (constant keeps one value)")
        if start is not None and end is not None and not 0 <= start <= end:
            raise ConfigError(f"lr_scheduler.end_wd: need 0 <= start_wd <= end_wd, got {start} and {end}")

    def kwargs(self) -> dict[str, Any]:
        """The fields written in the YAML, for ``build_lr_scheduler``."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class ClipGradNormSection:
    """``clip_grad_norm``: the total gradient norm is scaled down to ``max_norm`` (none: measured only)."""

    max_norm: float | None = None

    def __post_init__(self) -> None:
        if self.max_norm is not None and not self.max_norm > 0:
            raise ConfigError(f"clip_grad_norm.max_norm: must be > 0 or none, got {self.max_norm!r}")


@dataclass
class DistEnvSection:
    """``dist_env``: the process-group backend (``auto``: nccl on CUDA, gloo otherwise) and its timeout."""

    backend: Literal["auto", "nccl", "gloo"] | None = "auto"
    timeout_minutes: float = 1

    def __post_init__(self) -> None:
        if not self.timeout_minutes > 0:
            raise ConfigError(f"dist_env.timeout_minutes: must be > 0, got {self.timeout_minutes!r}")


@dataclass
class AutocastSection:
    """``autocast``: mixed precision for forward passes (fp32 master weights)."""

    dtype: Literal["bfloat16", "float16", "torch.bfloat16", "torch.float16", "bf16", "fp16"] | None = None
    enabled: bool = True


@dataclass
class PackedSequenceSection:
    """``packed_sequence``: several documents per row (0 turns packing off, as in NeMo AutoModel)."""

    packed_sequence_size: int = 0
    split_across_pack: bool = False
    pad_token_id: int | None = None
    skip_long_samples: bool = False
    packing_strategy: Literal["max_fill", "best_fit", "sequential"] = "max_fill"
    max_packs: int | None = None

    def __post_init__(self) -> None:
        if self.packed_sequence_size < 0:
            raise ConfigError(f"packed_sequence.packed_sequence_size: must be >= 0, got {self.packed_sequence_size}")
        _positive("packed_sequence", max_packs=self.max_packs)

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class GenerationEvalSection:
    """``generation_eval``: held-out exact match (or ``judge``'s verdict) by greedy generation, before and after
    training."""

    path_or_dataset_id: str
    column_mapping: dict[str, str] | None = None
    use_hf_chat_template: bool = True
    max_new_tokens: int = 16
    batch_size: int = 32
    limit: int | None = None
    before_training: bool = True
    judge: str | None = None  # import path of ``judge(generated, row) -> bool``; None: exact match of the answer
    adapt_threads: bool = True  # on a CPU, decode on no more threads than other processes leave cores free

    def __post_init__(self) -> None:
        if self.judge is not None:
            from nemo_like.config.target_gate import precheck_target

            precheck_target(self.judge, "generation_eval.judge")
        _positive("generation_eval", max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, limit=self.limit)


@dataclass
class CompileSection:
    """``compile``: ``torch.compile`` the model in place after it is sharded (off by default)."""

    enabled: bool = False
    mode: str | None = "default"
    fullgraph: bool = False
    dynamic: bool | None = False
    backend: str | None = None  # None: torch's default (inductor)
    options: dict[str, Any] | None = None
    dynamo_cache_size_limit: int = 256

    def __post_init__(self) -> None:
        _positive("compile", dynamo_cache_size_limit=self.dynamo_cache_size_limit)
        if self.options and self.mode not in (None, "default"):
            raise ConfigError("compile.options: torch.compile takes either mode or options, not both")

    def compile_kwargs(self) -> dict[str, Any]:
        """The arguments of ``torch.compile``."""
        kwargs: dict[str, Any] = {"fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.backend is not None:
            kwargs["backend"] = self.backend
        if self.options:
            kwargs["options"] = dict(self.options)
        elif self.mode not in (None, "default"):
            kwargs["mode"] = self.mode
        return kwargs


@dataclass
class FP8Section:
    """``fp8``: FP8 linear layers. Accepted only off: FP8 matmuls need Hopper-class GPUs and torchao's
    float8 training, which this library does not wire in."""

    enabled: bool = False
    recipe_name: str | None = None
    enable_fsdp_float8_all_gather: bool = False
    precompute_float8_dynamic_scale_for_fsdp: bool = False
    force_recompute_fp8_weight_in_bwd: bool = False
    filter_fqns: list[str] | None = None
    emulate: bool = False

    def __post_init__(self) -> None:
        if self.enabled:
            raise ConfigError("fp8.enabled: FP8 training is not supported here (no float8 linear layers); "
                              "use fp8.enabled: false and bf16 (model.torch_dtype)")


@dataclass
class NEFTuneSection:
    """``neftune``: uniform noise on the input embeddings while training (see ``components/training/neftune.py``)."""

    noise_alpha: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.noise_alpha < float("inf"):
            raise ConfigError(f"neftune.noise_alpha: must be a finite number >= 0, got {self.noise_alpha!r}")


@dataclass
class QATSection:
    """``qat``: quantization-aware training (``qat_config`` builds a QATConfig; see ``components/quantization/qat.py``)."""

    enabled: bool = False
    fake_quant_after_n_steps: int | None = None
    qat_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.fake_quant_after_n_steps is not None and self.fake_quant_after_n_steps < 0:
            raise ConfigError(f"qat.fake_quant_after_n_steps: must be >= 0 or none, got {self.fake_quant_after_n_steps!r}")
        if self.enabled and self.qat_config is None:
            raise ConfigError("qat.qat_config: required when qat.enabled is true, e.g. {_target_: "
                              "nemo_like.components.quantization.qat.QATConfig, quantizer_type: int8_dynact_int4weight, "
                              "groupsize: 256}")
        if self.qat_config is not None and "_target_" not in self.qat_config:
            raise ConfigError("qat.qat_config: needs a '_target_' (nemo_like.components.quantization.qat.QATConfig)")
