"""Check a multi-GPU recipe on any machine: build its mesh and shard its model without weights or GPUs.

    python -m nemo_like.components.distributed.dry_run --config recipes/llama3_8b/sft_tp2_fsdp4.yaml

A fake process group stands in for the N ranks (this process plays rank 0), the model is
built on the meta device (shapes only, no memory), and the real parallelizer applies the
recipe's tensor parallel and FSDP2 plan to it. What comes out is what rank 0 of the real
job would hold: every parameter's placement and local shape, and an estimate of the
memory that parameters, gradients and AdamW state take per GPU. A wrong size, a
batch that does not divide, a model without a TP plan or heads that do not split fail
here in seconds instead of after a queue wait.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode

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


def _model_config(cfg: ConfigNode) -> Any:
    from transformers import AutoConfig

    name = cfg.get("model.pretrained_model_name_or_path", None) or cfg.get("model.config", None)
    if name is None:
        raise ConfigError("model.pretrained_model_name_or_path: the dry run needs it to know the architecture")
    name = str(name)
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


def _dtype(cfg: ConfigNode) -> torch.dtype:
    from nemo_like.components.distributed.config import resolve_dtype

    value = cfg.get("model.torch_dtype", None) or cfg.get("model.dtype", None)
    return resolve_dtype(value, "model.torch_dtype") or torch.bfloat16


def dry_run(cfg: ConfigNode, world_size: int | None = None) -> dict[str, Any]:
    """Plan and shard ``cfg``'s model for ``world_size`` ranks on the meta device; returns rank 0's view."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoModelForCausalLM

    from nemo_like.components.distributed.config import DistributedConfig, FSDP2Config
    from nemo_like.components.distributed.mesh import build_device_mesh, plan_mesh
    from nemo_like.components.distributed.parallelizer import parallelize_model

    layout = DistributedConfig.from_section(cfg.get("distributed").to_dict() if "distributed" in cfg else None)
    if world_size is None:
        if layout.dp_size is None:
            raise ConfigError("distributed.dp_size: is none, so give the number of ranks (--world-size N)")
        world_size = layout.dp_size * layout.tp_size * layout.cp_size
    plan = plan_mesh(world_size, layout)
    sched = cfg.get("step_scheduler").to_dict() if "step_scheduler" in cfg else {}
    gbs, lbs = sched.get("global_batch_size"), sched.get("local_batch_size")
    if gbs and lbs and gbs % (lbs * plan.dp):
        raise ConfigError(f"step_scheduler.global_batch_size: {gbs} is not divisible by local_batch_size * dp_size "
                          f"= {lbs} * {plan.dp}")
    strategy = cfg.distributed_config.instantiate() if "distributed_config" in cfg else FSDP2Config()
    config = _model_config(cfg)
    dtype = _dtype(cfg)
    if dist.is_initialized():
        raise RuntimeError("dry_run: a process group is already running in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        meshes = build_device_mesh(plan, "cpu")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if "peft" in cfg:
            from nemo_like.components._peft.lora import apply_lora_to_linear_modules

            apply_lora_to_linear_modules(model, cfg.peft.instantiate())
        total = sum(p.numel() for p in model.parameters())
        parallelize_model(model, meshes, strategy, sequence_parallel=layout.sequence_parallel)
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
        "world_size": world_size,
        "model_type": getattr(config, "model_type", None),
        "parameters": total,
        "local_parameters": local_params,
        "memory_gib": {"params": param_bytes / gib, "grads": grads / gib, "adamw": adam / gib,
                       "total": (param_bytes + grads + adam) / gib},
        "parameters_by_name": rows,
        "grad_acc_steps": (gbs // (lbs * plan.dp)) if gbs and lbs else None,
    }


def format_report(report: dict[str, Any], examples: int = 12) -> str:
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


def main(argv: list[str] | None = None) -> int:
    from nemo_like.config.arg_parser import parse_args_and_load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    world_size = None
    for flag in ("--world-size", "--world_size", "--nproc"):
        if flag in argv:
            i = argv.index(flag)
            world_size = int(argv[i + 1])
            del argv[i : i + 2]
    try:
        cfg = parse_args_and_load_config(argv)
        print(format_report(dry_run(cfg, world_size)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
