"""Check a multi-GPU layout on any machine: build its mesh and shard its model without weights or GPUs.

    nemo-like dry-run -c recipes/llama3_8b/sft_tp2_fsdp4.yaml   # the recipe's sections: recipes/llm/dry_run.py

A fake process group stands in for the N ranks (this process plays rank 0), the model is
built on the meta device (shapes only, no memory), and the real parallelizer applies the
recipe's tensor parallel and FSDP2 plan to it. What comes out is what rank 0 of the real
job would hold: every parameter's placement and local shape, and an estimate of the
memory that parameters, gradients and AdamW state take per GPU. A wrong size, a
batch that does not divide, a model without a TP plan or heads that do not split fail
here in seconds instead of after a queue wait.
"""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components._peft.lora import apply_lora_to_linear_modules
from nemo_like.components.distributed.mesh import MeshPlan, build_device_mesh
from nemo_like.components.distributed.parallelizer import parallelize_model
from nemo_like.config.errors import ConfigError

# Architecture (shapes only) of models the recipes name, for machines without the hub.
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    ),
}
KNOWN_ARCHITECTURES["meta-llama/Llama-3.1-8B"] = dict(KNOWN_ARCHITECTURES["meta-llama/Meta-Llama-3-8B"],
                                                      max_position_embeddings=131072)


def architecture_config(name: str) -> Any:
    """The transformers config of model ``name`` (hub id or directory); shapes of known models without the hub."""
    from transformers import AutoConfig

    try:
        # A model we know the shapes of is not worth a hub round trip (or its retries offline).
        return AutoConfig.from_pretrained(name, local_files_only=name in KNOWN_ARCHITECTURES)
    except (OSError, ValueError):
        if name in KNOWN_ARCHITECTURES:
            fields = dict(KNOWN_ARCHITECTURES[name])
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
        raise ConfigError(f"model.pretrained_model_name_or_path: cannot read the config of {name!r} here "
                          f"(no hub, not a local directory); known without the hub: {', '.join(KNOWN_ARCHITECTURES)}"
                          ) from None


def dry_run(model_config: Any, plan: MeshPlan, strategy: Any, *, dtype: torch.dtype, sequence_parallel: bool = False,
            peft_config: Any = None) -> dict[str, Any]:
    """Shard a model of ``model_config`` for ``plan``'s ranks on the meta device; returns rank 0's view.

    ``strategy`` is the ``FSDP2Config`` / ``DDPConfig`` (its ``tp_plan`` already resolved) and
    ``peft_config`` the LoRA settings, when the run adds adapters.
    """
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoModelForCausalLM

    if dist.is_initialized():
        raise RuntimeError("dry_run: a process group is already running in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=plan.world_size)
    try:
        meshes = build_device_mesh(plan, "cpu")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
        if peft_config is not None:
            apply_lora_to_linear_modules(model, peft_config)
        total = sum(p.numel() for p in model.parameters())
        parallelize_model(model, meshes, strategy, sequence_parallel=sequence_parallel)
        rows, local_params, local_trainable, param_bytes = [], 0, 0, 0
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local_params += local.numel()
            param_bytes += local.numel() * local.element_size()
            if p.requires_grad:
                local_trainable += local.numel()
            placements = tuple(str(x) for x in getattr(p, "placements", ()))
            rows.append({"name": name, "global": tuple(p.shape), "local": tuple(local.shape), "placements": placements})
    finally:
        dist.destroy_process_group()
    gib = 1024**3
    # Gradients in the parameter dtype; AdamW's two moments in fp32 (optimizer state follows the shards).
    grads = local_trainable * torch.finfo(dtype).bits // 8
    adam = local_trainable * 8
    return {
        "plan": plan,
        "world_size": plan.world_size,
        "model_type": getattr(model_config, "model_type", None),
        "parameters": total,
        "local_parameters": local_params,
        "memory_gib": {"params": param_bytes / gib, "grads": grads / gib, "adamw": adam / gib,
                       "total": (param_bytes + grads + adam) / gib},
        "parameters_by_name": rows,
    }


def format_report(report: dict[str, Any], examples: int = 12) -> str:
    """The report as the dry-run command prints it: the mesh, the memory per GPU, a few parameters' shards."""
    plan, mem = report["plan"], report["memory_gib"]
    lines = [
        f"mesh: {plan.describe()}",
        f"model: {report['model_type']}, {report['parameters']:,} parameters; "
        f"rank 0 holds {report['local_parameters']:,}",
        f"per-GPU state: params {mem['params']:.2f} GiB + grads {mem['grads']:.2f} GiB + AdamW {mem['adamw']:.2f} GiB"
        f" = {mem['total']:.2f} GiB (activations come on top)",
    ]
    if report.get("grad_acc_steps"):
        lines.append(f"gradient accumulation: {report['grad_acc_steps']} micro-batches per step")
    seen: set[str] = set()
    for row in report["parameters_by_name"]:
        kind = row["name"].split(".")[-2] if row["name"].count(".") else row["name"]
        if kind in seen or len(seen) >= examples:
            continue
        seen.add(kind)
        lines.append(f"  {row['name']}: {list(row['global'])} -> local {list(row['local'])} {list(row['placements'])}")
    lines.append("dry run OK")
    return "\n".join(lines)
