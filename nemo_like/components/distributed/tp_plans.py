"""Tensor-parallel plans: which module is split how, per model family.

Llama, Qwen2, Qwen3 and Mistral share one layout (Megatron style): q/k/v and gate/up are
split by output features (colwise), o_proj and down_proj by input features (rowwise), so
each block needs one all-reduce after attention and one after the MLP. The embedding is
split by vocabulary (rowwise, replicated input) and lm_head by vocabulary (colwise) with
the logits gathered, so the loss sees ordinary full logits.

With ``sequence_parallel`` the norms and residual stream stay split along the sequence
between blocks (activation memory / tp), and the all-reduces become reduce-scatter +
all-gather pairs; the sequence length must then divide by tp (the recipe pads it).
Models of other families fall back to the plan transformers ships with
the class (``model._tp_plan``); a model with neither gets a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nemo_like.config.errors import ConfigError

# Families whose decoder uses the Llama module names (model.layers.N.self_attn.q_proj, ...).
LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral")


def _styles() -> dict[str, Any]:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    # Names used by transformers' ``_tp_plan`` and by ``distributed_config.tp_plan``.
    return {
        "colwise": lambda: ColwiseParallel(),
        "rowwise": lambda: RowwiseParallel(),
        "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),
        "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
        "rowwise_rep": lambda: RowwiseParallel(input_layouts=Replicate()),
        "rowwise_split_input": lambda: RowwiseParallel(input_layouts=Replicate()),
        "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
        "sequence_parallel": lambda: SequenceParallel(use_local_output=True),
        # Per-head norms (Qwen3's q_norm/k_norm) see only this rank's heads: treat the head
        # dimension as the split one, so their weight gradients are summed over the group.
        "replicated_with_grad_allreduce": lambda: SequenceParallel(sequence_dim=2, use_local_output=True),
    }


def llama_tp_plan(model: nn.Module, sequence_parallel: bool = False) -> dict[str, Any]:
    """The plan for Llama / Qwen2 / Qwen3 / Mistral causal LMs (module names as in transformers)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, Any] = {
        # Replicated output even under sequence parallel: transformers derives the rotary positions and
        # the attention mask from the embedding's sequence length, so that must stay the full one.
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "model.layers.*.self_attn.q_proj": ColwiseParallel(),
        "model.layers.*.self_attn.k_proj": ColwiseParallel(),
        "model.layers.*.self_attn.v_proj": ColwiseParallel(),
        "model.layers.*.self_attn.o_proj": RowwiseParallel(output_layouts=seq),
        "model.layers.*.mlp.gate_proj": ColwiseParallel(),
        "model.layers.*.mlp.up_proj": ColwiseParallel(),
        "model.layers.*.mlp.down_proj": RowwiseParallel(output_layouts=seq),
        "lm_head": ColwiseParallel(input_layouts=seq, output_layouts=Replicate()),
    }
    if getattr(getattr(model, "config", None), "model_type", None) == "qwen3":
        plan["model.layers.*.self_attn.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["model.layers.*.self_attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    if sequence_parallel:
        plan.update({
            # The residual stream is split along the sequence from the first block on (a local slice, no traffic).
            "model.layers.0": PrepareModuleInput(
                input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=True
            ),
            "model.norm": SequenceParallel(use_local_output=True),
            "model.layers.*.input_layernorm": SequenceParallel(use_local_output=True),
            "model.layers.*.post_attention_layernorm": SequenceParallel(use_local_output=True),
            # The blocks take the sequence-split residual and gather it for attention / the MLP.
            "model.layers.*.self_attn": PrepareModuleInput(
                input_kwarg_layouts={"hidden_states": Shard(1)},
                desired_input_kwarg_layouts={"hidden_states": Replicate()},
                use_local_output=True,
            ),
            "model.layers.*.mlp": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
            ),
        })
    return plan


def translate_plan(plan: dict[str, str], key: str) -> dict[str, Any]:
    """Style names (transformers' or ours) -> torch ParallelStyle objects."""
    styles = _styles()
    out = {}
    for pattern, name in plan.items():
        if not isinstance(name, str):
            out[pattern] = name  # already a ParallelStyle
            continue
        if name not in styles:
            raise ConfigError(f"{key}: style {name!r} of {pattern!r} is not one of {', '.join(sorted(styles))}")
        out[pattern] = styles[name]()
    return out


def _hf_plan(model: nn.Module) -> dict[str, str] | None:
    plan = getattr(model, "_tp_plan", None) or getattr(model, "tp_plan", None)
    return dict(plan) if plan else None


def get_tp_plan(
    model: nn.Module, sequence_parallel: bool = False,
    custom: dict[str, Any] | Callable[[nn.Module, bool], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The plan for ``model``: ``custom`` when given, the built-in family plan, else transformers' own.

    ``custom`` is a plan mapping or a plan function ``(model, sequence_parallel) -> mapping``; an
    import path written in YAML is resolved through the gate by the recipe before sharding.
    """
    if custom is not None:
        if isinstance(custom, str):
            raise ConfigError(f"distributed_config.tp_plan: {custom!r} is an import path; pass the plan or the "
                              "plan function itself (a recipe's model builder resolves the path through the gate)")
        if callable(custom):
            custom = custom(model, sequence_parallel)
        if not isinstance(custom, dict) or not custom:
            raise ConfigError("distributed_config.tp_plan: must be a non-empty mapping of module pattern -> style")
        return translate_plan(custom, "distributed_config.tp_plan")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in LLAMA_LIKE:
        return llama_tp_plan(model, sequence_parallel)
    hf = _hf_plan(model)
    if hf:
        if sequence_parallel:
            raise ConfigError(f"distributed.sequence_parallel: no sequence-parallel plan for model type "
                             f"{model_type!r}; set sequence_parallel: false (its transformers plan still applies)")
        return translate_plan(hf, f"the transformers tp plan of {type(model).__name__}")
    raise ConfigError(
        f"distributed.tp_size: no tensor-parallel plan for {type(model).__name__} (model type {model_type!r}); "
        f"built-in plans cover {', '.join(LLAMA_LIKE)}; give distributed_config.tp_plan or use tp_size: 1"
    )


def check_tp_divisibility(model: nn.Module, tp_size: int) -> None:
    """Heads must split evenly over the tensor-parallel ranks; say which count does not."""
    config = getattr(model, "config", None)
    for name in ("num_attention_heads", "num_key_value_heads"):
        count = getattr(config, name, None)
        if isinstance(count, int) and count % tp_size != 0:
            raise ConfigError(f"distributed.tp_size: {tp_size} does not divide the model's {name} ({count})")


def tied_output_embedding(model: nn.Module) -> bool:
    """True when lm_head shares its weight with the input embedding (it must be re-tied after sharding)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if not callable(get_in) or not callable(get_out):
        return False
    emb, head = get_in(), get_out()
    return emb is not None and head is not None and isinstance(getattr(head, "weight", None), torch.Tensor) \
        and head.weight is emb.weight
