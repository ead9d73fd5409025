"""The ``model`` (with ``tokenizer``, ``quantization``, ``peft``, ``distributed``, ``distributed_config``,
``compile``) sections as a trainable model: load -> quantize -> LoRA -> place -> shard -> activation
checkpointing -> compile, in that order, once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nemo_like._transformers.embedded import resolve_pretrained_path, split_gguf_path
from nemo_like._transformers.tokenizer import build_tokenizer as load_tokenizer
from nemo_like.components._peft.lora import apply_lora_to_linear_modules
from nemo_like.components.datasets.llm.context_limit import context_length_of
from nemo_like.components.distributed.config import DistributedConfig, FSDP2Config
from nemo_like.components.models.common.backend import BackendConfig
from nemo_like.components.distributed.parallelizer import apply_activation_checkpointing, parallelize_model
from nemo_like.components.quantization.qlora import create_bnb_config, prepare_model_for_qlora
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode, resolve_target

logger = logging.getLogger("nemo_like")


@dataclass
class BuiltModel:
    """The model ready for the optimizer, and what the step needs to know about how it was built."""

    model: torch.nn.Module
    peft_config: Any = None  # the LoRA/DoRA settings when adapters were added (saved as an HF-PEFT adapter)
    defer_grad_sync: bool = False  # FSDP2 reduce-scatters once per step, after the last micro-batch
    sequence_parallel: bool = False


def build_tokenizer(cfg: ConfigNode, model_id: str | None) -> Any:
    """The ``tokenizer`` section, else the tokenizer that ships with ``model.pretrained_model_name_or_path``."""
    if "tokenizer" in cfg:
        return cfg.tokenizer.instantiate()
    if model_id is None:
        raise ConfigError("model.pretrained_model_name_or_path: needed to build the tokenizer (or add a tokenizer section)")
    try:
        return load_tokenizer(model_id)
    except ValueError as err:
        raise ConfigError(f"model.pretrained_model_name_or_path: {err}") from err


def model_context_length(model_id: Any) -> int | None:
    """The model's context from its config file, read before the data is built; None when it cannot be told."""
    if not isinstance(model_id, str):
        return None
    from transformers import AutoConfig

    try:
        path, gguf_file = split_gguf_path(resolve_pretrained_path(model_id))
        config = AutoConfig.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError):  # the model loader reports an unreadable config in its own words
        return None
    return context_length_of(config)


def build_model(cfg: ConfigNode, dist: Any, device: torch.device, layout: Any, frozen: bool = False,
                prepare: Callable[[torch.nn.Module, Any], Any] | None = None) -> BuiltModel:
    """Every model-side section applied once, in order; ``layout`` is the typed ``distributed`` section.

    ``frozen``: a model that is only read (a preference method's reference): no adapters, no gradients,
    eval mode, sharded like the trained one (replicated under DDP, which has nothing to reduce).
    ``prepare(model, peft_config)``: a method's own step between loading and adapters (a VLM freezes its
    vision tower there and keeps LoRA off it); returns the adapter settings to apply.
    """
    quantized = cfg.get("quantization", None) is not None
    if frozen and quantized:
        raise ConfigError("reference.mode: frozen_copy of a quantized (QLoRA) model; use adapter_off")
    model = _load_quantized_model(cfg, dist, device) if quantized else cfg.model.instantiate(**model_options(cfg))
    built = BuiltModel(model)
    if frozen:
        model.requires_grad_(False)
    else:
        built.peft_config = cfg.peft.instantiate() if "peft" in cfg else None
        if prepare is not None:
            built.peft_config = prepare(model, built.peft_config)
        if built.peft_config is not None:
            count = apply_lora_to_linear_modules(model, built.peft_config)
            logger.info("LoRA applied to %d linear modules", count)
    if not quantized:  # bitsandbytes places its packed weights while loading
        model.to(device)
    # transformers' count unpacks 4-bit storage (two weights per byte); a plain sum would not.
    counter = getattr(model, "num_parameters", None)
    total = counter() if callable(counter) else sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    if dist.world_size > 1:
        built.model = _shard(cfg, model, dist, layout, built, frozen)
    elif frozen:
        pass
    elif build_parallel_strategy(cfg.get("distributed_config"), layout).activation_checkpointing:
        # With several ranks the parallelizer applies it while sharding. Each decoder block then
        # recomputes its activations in backward instead of keeping them (less memory, ~1/3 more compute).
        blocks = apply_activation_checkpointing(model)
        logger.info("activation checkpointing: %d decoder blocks recompute their activations in backward", blocks)
    built.model.train(not frozen)
    compile_model(built.model, cfg.get("compile", None))
    return built


def model_options(cfg: ConfigNode) -> dict[str, Any]:
    """Arguments the builder passes to the model target itself: ``model.backend`` as a checked
    ``BackendConfig`` (built here, so its fields are checked as this library defines them)."""
    backend = cfg.get("model.backend", None)
    return {} if backend is None else {"backend": BackendConfig.from_section(backend)}


def compile_model(model: torch.nn.Module, section: Any) -> bool:
    """``compile: {enabled: true, ...}``: ``torch.compile`` the model in place (parameter names, and so
    checkpoint keys, stay as they are); returns whether it compiled."""
    from nemo_like.recipes.sections import CompileSection

    if section is None:
        return False
    options = section if isinstance(section, CompileSection) else CompileSection(
        **(section.to_dict() if hasattr(section, "to_dict") else dict(section)))
    if not options.enabled:
        return False
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                options.dynamo_cache_size_limit)
    model.compile(**options.compile_kwargs())
    logger.info("torch.compile: %s", options.compile_kwargs())
    return True


def _load_quantized_model(cfg: ConfigNode, dist: Any, device: torch.device) -> torch.nn.Module:
    """QLoRA: load the base through bitsandbytes and make its 4-bit layers safe to train through."""
    if "peft" not in cfg:
        raise ConfigError("quantization: needs a peft section; quantized base weights cannot be trained directly")
    if dist.world_size > 1:
        raise ConfigError("quantization: FSDP2 cannot shard bitsandbytes layers; run QLoRA as a single process")
    try:
        bnb_config = create_bnb_config(cfg.quantization.to_dict())
    except (ValueError, ImportError) as err:
        raise ConfigError(str(err)) from err
    kwargs: dict[str, Any] = {"quantization_config": bnb_config}
    if device.type == "cuda" and "device_map" not in cfg.model:
        kwargs["device_map"] = {"": device}
    target = cfg.model.get("_target_")
    hint = "use nemo_like.NeMoAutoModelForCausalLM.from_pretrained"
    try:
        model = cfg.model.instantiate(**kwargs, **model_options(cfg))
    except ConfigError as err:
        if "quantization_config" not in str(err):
            raise
        raise ConfigError(f"quantization: model target {target} does not take quantization_config; {hint}") from err
    # Before any forward: a CPU eval pass would otherwise repack 4-bit weights for inference only.
    if prepare_model_for_qlora(model) == 0:
        raise ConfigError(f"quantization: model target {target} ignored quantization_config "
                          f"(no bitsandbytes layers); {hint}")
    return model


def resolve_tp_plan(plan: Any) -> Any:
    """``distributed_config.tp_plan`` as the parallelizer takes it: an import path from the YAML resolved
    through the gate (to a plan function ``(model, sequence_parallel)`` or a plan mapping), else as given."""
    return resolve_target(plan, "distributed_config.tp_plan") if isinstance(plan, str) else plan


def build_parallel_strategy(section: ConfigNode | None, layout: DistributedConfig | None = None) -> Any:
    """The strategy: the ``distributed_config`` section, else the ``distributed`` section's ``strategy``
    (FSDP2 by default), with the options the ``distributed`` section writes applied; ``tp_plan`` resolved."""
    base = section.instantiate() if section is not None else None
    strategy = layout.build_strategy(base) if layout is not None else (base or FSDP2Config())
    if isinstance(getattr(strategy, "tp_plan", None), str):
        strategy.tp_plan = resolve_tp_plan(strategy.tp_plan)
    return strategy


def _shard(cfg: ConfigNode, model: torch.nn.Module, dist: Any, layout: Any, built: BuiltModel,
           frozen: bool = False) -> torch.nn.Module:
    """Tensor/context parallel and FSDP2 (or DDP) over the device mesh, as ``distributed_config`` says."""
    strategy = build_parallel_strategy(cfg.get("distributed_config"), layout)
    if frozen:
        from nemo_like.components.distributed.config import DDPConfig

        if isinstance(strategy, DDPConfig):
            return model  # a replica per rank, as DDP would keep; no gradients to reduce
        strategy = dataclasses.replace(strategy, activation_checkpointing=False) if dataclasses.is_dataclass(
            strategy) else strategy
    built.sequence_parallel = dist.tp_size > 1 and (layout.sequence_parallel or
                                                     bool(getattr(strategy, "sequence_parallel", False)))
    built.defer_grad_sync = bool(getattr(strategy, "defer_fsdp_grad_sync", False))
    return parallelize_model(model, dist.mesh, strategy, sequence_parallel=built.sequence_parallel)
