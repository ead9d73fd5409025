"""Write the generated reference pages of the documentation site.

    python tools/gen_config_reference.py            # writes both pages
    python tools/gen_config_reference.py --check    # exit 1 if a committed page differs

``docs/reference/configuration.md``: every top-level section of each method's recipe (SFT, DPO,
GRPO, VLM), read from the recipe schemas (``nemo_like.cli_info.METHOD_SCHEMAS``), and every field of
the typed sections with its type, default and meaning. The meaning comes from the field's comment in
the source, else from the sentence of the class docstring that names the field, else from the short
table below; a field with none of these says so.

``docs/reference/errors.md``: every message of a ``ConfigError``, ``DatasetError`` or
``CheckpointError`` (and their subclasses) constructed in ``nemo_like/``, read from the source with
``ast``, grouped by area. ``tests/test_docs.py`` checks that both committed pages equal what this
script writes, so a new error message or field cannot go unlisted.

Only the standard library and ``nemo_like`` are used; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from error_reference import ERRORS_PAGE, error_sites, errors_page  # noqa: E402,F401  (error_sites: tests read it)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG_PAGE = REPO / "docs" / "reference" / "configuration.md"

# Meanings for fields whose class has neither a comment nor a docstring sentence about them.
MEANINGS = {
    "step_scheduler.global_batch_size": "samples per optimizer step, over all micro-batches and data-parallel ranks",
    "step_scheduler.local_batch_size": "samples per micro-batch on one rank; gradient accumulation = global / "
                                       "(local x data-parallel ranks)",
    "step_scheduler.max_steps": "stop after this many optimizer steps (needed for a streamed dataset)",
    "step_scheduler.num_epochs": "stop after this many passes over the data",
    "step_scheduler.ckpt_every_steps": "save a checkpoint every N optimizer steps (and at the end)",
    "step_scheduler.val_every_steps": "run validation every N optimizer steps",
    "lr_scheduler.lr_decay_style": "the decay after warmup",
    "lr_scheduler.lr_warmup_steps": "linear warmup steps (unset: 10% of the steps, at most 1000)",
    "lr_scheduler.lr_decay_steps": "steps over which the rate decays (unset: all steps)",
    "lr_scheduler.min_lr": "the rate the decay ends at",
    "lr_scheduler.init_lr": "the rate warmup starts from",
    "lr_scheduler.wsd_decay_steps": "WSD: steps of the final decay phase",
    "lr_scheduler.lr_wsd_decay_style": "WSD: the shape of the final decay",
    "lr_scheduler.start_weight_decay": "NeMo's name for `start_wd`",
    "lr_scheduler.end_weight_decay": "NeMo's name for `end_wd`",
    "lr_scheduler.weight_decay_incr_style": "NeMo's name for `wd_incr_style`",
    "lr_scheduler.start_wd": "weight decay at the first step",
    "lr_scheduler.end_wd": "weight decay at the last step (needs `wd_incr_style` linear or cosine)",
    "lr_scheduler.wd_incr_steps": "steps over which weight decay moves from start to end",
    "lr_scheduler.wd_incr_style": "constant, linear or cosine",
    "dist_env.backend": "`auto` (the default, or unset): nccl with CUDA, gloo without; `nccl` without CUDA "
                        "falls back to gloo with a warning",
    "dist_env.timeout_minutes": "collective timeout; raise it for long consolidated saves",
    "autocast.dtype": "the autocast dtype of forward passes (none: off)",
    "autocast.enabled": "false turns autocast off while keeping the section",
    "packed_sequence.packed_sequence_size": "tokens per pack (0: no packing)",
    "packed_sequence.split_across_pack": "a document longer than the room left is split across packs",
    "packed_sequence.pad_token_id": "the id that fills a pack's tail (unset: the tokenizer's pad id)",
    "packed_sequence.skip_long_samples": "drop documents longer than a pack instead of cutting them",
    "packed_sequence.packing_strategy": "how documents are placed into packs",
    "packed_sequence.max_packs": "stop after this many packs",
    "generation_eval.path_or_dataset_id": "held-out rows (local file or hub id)",
    "generation_eval.column_mapping": "the dataset's column names for question / answer",
    "generation_eval.use_hf_chat_template": "render prompts with the tokenizer's chat template",
    "generation_eval.max_new_tokens": "greedy tokens generated per prompt",
    "generation_eval.batch_size": "prompts per generation batch",
    "generation_eval.limit": "the first N rows only",
    "generation_eval.before_training": "also score the model before the first step",
    "compile.enabled": "compile the model",
    "compile.mode": "`torch.compile` mode",
    "compile.fullgraph": "`torch.compile` fullgraph",
    "compile.dynamic": "`torch.compile` dynamic shapes",
    "compile.options": "inductor options (instead of `mode`)",
    "compile.dynamo_cache_size_limit": "`torch._dynamo.config.cache_size_limit`",
    "neftune.noise_alpha": "the noise scale (NEFTune's alpha)",
    "qat.enabled": "turn quantization-aware training on",
    "qat.fake_quant_after_n_steps": "train this many steps before fake quantization starts",
    "qat.qat_config": "a mapping with `_target_: nemo_like.components.quantization.qat.QATConfig` and its arguments",
    "fp8.enabled": "accepted only as false",
    "checkpoint.enabled": "false: no checkpoints are written or read",
    "checkpoint.checkpoint_dir": "where step directories, `LATEST` and the logs go",
    "checkpoint.model_save_format": "`safetensors` or `torch_save`",
    "distributed.dp_replicate_size": "> 1: HSDP, replicas of FSDP groups",
    "distributed.tp_size": "tensor-parallel ranks",
    "distributed.cp_size": "context-parallel ranks (the sequence split over ranks)",
    "distributed.pp_size": "pipeline parallel: only 1",
    "distributed.ep_size": "expert parallel: only 1",
    "distributed.defer_fsdp_grad_sync": "FSDP2: reduce-scatter gradients once per step, after the last micro-batch",
    "distributed.reshard_after_forward": "FSDP2: free gathered weights after each block's forward",
    "distributed.mp_policy": "FSDP2 mixed precision (param / reduce dtypes)",
    "distributed.pipeline": "NeMo AutoModel's pipeline block: inert with pp_size 1",
    "distributed.moe": "NeMo AutoModel's MoE block: inert with ep_size 1",
    "dpo.beta": "strength of the preference (the KL penalty's inverse temperature)",
    "dpo.loss_type": "one loss or a list of them",
    "dpo.loss_weights": "one weight per listed loss",
    "dpo.label_smoothing": "cDPO / robust: assumed share of flipped labels",
    "dpo.rpo_alpha": "adds rpo_alpha x the chosen completions' NLL",
    "dpo.gamma": "SimPO's margin",
    "grpo.num_generations": "completions sampled per prompt",
    "grpo.max_completion_length": "tokens per completion at most",
    "grpo.temperature": "sampling temperature",
    "grpo.top_p": "nucleus sampling",
    "grpo.top_k": "top-k sampling (0 or none: off)",
    "grpo.num_iterations": "optimizer updates per batch of completions (importance ratios after the first)",
    "grpo.loss_type": "how token losses are normalised (TRL's names)",
    "grpo.beta": "> 0: a k3 KL term against the reference",
    "grpo.epsilon": "the clipping range of the importance ratio",
    "grpo.epsilon_high": "upper clipping range (DAPO's asymmetric clipping)",
    "grpo.delta": "a cap on the importance ratio",
    "grpo.importance_sampling_level": "`sequence`: GSPO",
    "grpo.scale_rewards": "divide advantages by the group's or the batch's reward std, or not",
    "freeze_config.freeze_vision_tower": "keep the vision encoder as loaded",
    "freeze_config.freeze_embeddings": "keep the input embeddings as loaded",
    "freeze_config.freeze_language_model": "keep the language model as loaded",
    "peft.target_modules": "module-name globs to adapt",
    "peft.exclude_modules": "module-name globs never adapted",
    "peft.dim": "LoRA rank",
    "peft.alpha": "LoRA scale numerator (the update is scaled by alpha / dim)",
    "peft.dropout": "dropout on the adapter path",
    "peft.use_dora": "DoRA: a learned magnitude per output feature",
    "peft.lora_dtype": "dtype of the adapter weights (none: the base weight's)",
    "rng.seed": "the seed of python, numpy and torch",
    "fp8.recipe_name": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted only off)",
    "fp8.enable_fsdp_float8_all_gather": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted only off)",
    "fp8.precompute_float8_dynamic_scale_for_fsdp": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted "
                                                    "only off)",
    "fp8.force_recompute_fp8_weight_in_bwd": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted only off)",
    "fp8.filter_fqns": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted only off)",
    "fp8.emulate": "NeMo AutoModel's FP8 option; inert here (FP8 is accepted only off)",
    "freeze_config.freeze_audio_tower": "NeMo AutoModel's key for audio models: image-text models have no such part",
    "freeze_config.freeze_video_embedder": "NeMo AutoModel's key for video models: image-text models have no such "
                                           "part",
    "generation.backend": "`hf`: the model itself, batched, with a KV cache; `vllm` is refused in this build",
    "reference.mode": "where the reference log-probabilities come from (see the section's summary); unset: chosen "
                      "from the loss and `peft`",
    "rng.ranked": "offset the seed by the process rank (different dropout masks per data-parallel rank)",
}

NO_MEANING = "(not documented in the source)"

KIND_TEXT = {
    "typed": "typed", "built": "built (`_target_`)", "scalar": "value", "open": "open mapping", "list": "list",
    "refused": "refused",
}


# --------------------------------------------------------------------------------------------- configuration


def _schemas() -> dict[str, Any]:
    from nemo_like.cli_info import METHOD_SCHEMAS

    return {m: getattr(importlib.import_module(mod), name) for m, (mod, name) in METHOD_SCHEMAS.items()}


def _kind(schema: Any, section: str) -> str | None:
    if section in schema.refused:
        return "refused"
    if section in schema.typed:
        return "typed"
    if section in schema.scalars:
        return "scalar"
    if section in schema.built:
        return "built"
    if section in schema.open:
        return "open"
    if section in schema.lists:
        return "list"
    return None


def _clean(text: str) -> str:
    text = " ".join(text.split())
    return text.replace("``", "`").replace("|", "\\|")


def _source_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from ``name: T = default  # comment`` lines and ``# comment`` lines above a field."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    above: list[str] = []
    field_re = re.compile(r"^\s+([A-Za-z_]\w*)\s*:[^=#]*(=[^#]*)?(#\s*(.*))?$")
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = field_re.match(line)
        if match and not stripped.startswith(("def ", "return", "raise")):
            comment = match.group(4) or ""
            text = " ".join(x for x in (" ".join(above), comment) if x)
            if text and match.group(1) not in found:
                found[match.group(1)] = text
        above = []
    return found


def _docstring_sentences(cls: type) -> dict[str, str]:
    """``{field: sentence}`` for the sentences of the class docstring that name ````field````."""
    doc = " ".join((inspect.getdoc(cls) or "").split())
    sentences = re.split(r"(?<=[.])\s+(?=[`A-Z(])", doc)
    found: dict[str, list[str]] = {}
    for sentence in sentences:
        for name in re.findall(r"``([A-Za-z_]\w*)(?=[`:= ])", sentence):
            bucket = found.setdefault(name, [])
            if sentence not in bucket:
                bucket.append(sentence)
    return {k: " ".join(v[:2]) for k, v in found.items()}


def _meanings(cls: type | None, section: str) -> dict[str, str]:
    comments = _source_comments(cls) if cls is not None else {}
    sentences = _docstring_sentences(cls) if cls is not None else {}

    def meaning(name: str) -> str:
        text = comments.get(name) or MEANINGS.get(f"{section}.{name}") or sentences.get(name)
        return _clean(text) if text else NO_MEANING

    return _Meaning(meaning)


class _Meaning(dict):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: str) -> str:
        return self.fn(key)


def _signature_fields(cls: type) -> list[tuple[str, str, str]]:
    """Fields of a built target that is a plain class (``StatefulRNG``): its ``__init__`` arguments."""
    out = []
    for name, param in inspect.signature(cls).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        kind = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
        default = "(required)" if param.default is param.empty else repr(param.default)
        out.append((name, str(kind), default))
    return out


def _field_table(rows: list[tuple[str, str, str]], meanings: Any) -> list[str]:
    out = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, kind, default in rows:
        out.append(f"| `{name}` | `{_clean(kind)}` | `{_clean(default)}` | {meanings[name]} |")
    return out


def config_page() -> str:
    from nemo_like.cli_info import BUILT_DEFAULTS, section_fields

    schemas = _schemas()
    methods = list(schemas)
    names = {m: s.name for m, s in schemas.items()}
    every = sorted(set().union(*(s.section_names | set(s.refused) for s in schemas.values())))
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by tools/gen_config_reference.py from the recipe schemas; do not edit by hand. -->",
        "",
        "Every top-level key a recipe YAML may hold, for each training method, and every field of the",
        "typed sections with its type and default. A key that is not listed here is an error, never",
        "ignored. `nemo-like config-fields SECTION [--method M]` prints one section's fields from the",
        "same source.",
        "",
        "Kinds of section:",
        "",
        "- **typed**: a plain mapping checked against a dataclass before torch loads (fields below);",
        "- **built (`_target_`)**: a mapping whose `_target_` is instantiated; its other keys are the",
        "  target's arguments, checked against the target's signature (`null` turns an optional one off);",
        "- **value**: a top-level scalar;",
        "- **open mapping**: read by a component that checks its own keys (trackers, lm-eval, quantization);",
        "- **list**: a list of built entries;",
        "- **refused**: a name a NeMo AutoModel user may expect, refused with the reason given below.",
        "",
        "## Sections by method",
        "",
        "| section | " + " | ".join(f"{names[m]} (`{m}`)" for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for section in every:
        cells = []
        for m in methods:
            kind = _kind(schemas[m], section)
            text = KIND_TEXT.get(kind, "-") if kind else "-"
            if section in schemas[m].required:
                text += ", required"
            cells.append(text)
        out.append(f"| `{section}` | " + " | ".join(cells) + " |")
    out += ["", "Typed sections marked as defaulted are built with their defaults when absent: " + ", ".join(
        f"`{s}`" for s in sorted(set().union(*(s.defaulted for s in schemas.values())))) + "; other typed",
        "sections absent from the YAML leave their feature off.", ""]

    # Typed sections: each once, with the methods that have it.
    out += ["## Typed sections", ""]
    typed_sections: dict[tuple[str, str], tuple[type, list[str]]] = {}
    for m in methods:
        for section, cls in schemas[m].typed.items():
            entry = typed_sections.setdefault((section, cls.__qualname__), (cls, []))
            entry[1].append(m)
    shared = {s for s, _ in typed_sections}
    for section, qualname in sorted(typed_sections):
        cls, where = typed_sections[(section, qualname)]
        method = where[0]
        summary, rows = section_fields(section, method)
        several = sum(1 for s, _ in typed_sections if s == section) > 1
        title = f"`{section}` ({', '.join(where)})" if several and section in shared else f"`{section}`"
        out += [f"### {title}", "", _clean(summary), "",
                f"Methods: {', '.join(f'`{m}`' for m in where)}. Class: `{cls.__module__}.{cls.__name__}`.", ""]
        out += _field_table(rows, _meanings(cls, section)) + [""]

    out += ["## Top-level values", "", "| key | type | default | methods |", "|---|---|---|---|"]
    scalars: dict[str, tuple[str, str, list[str]]] = {}
    for m in methods:
        for key in schemas[m].scalars:
            _, rows = section_fields(key, m)
            scalars.setdefault(key, (rows[0][1], rows[0][2], []))[2].append(m)
    for key in sorted(scalars):
        kind, default, where = scalars[key]
        out.append(f"| `{key}` | `{_clean(kind)}` | `{_clean(default)}` | {', '.join(where)} |")
    out += ["", "- `nan_policy`: `error` stops a run whose loss or gradient norm is NaN/inf (exit code 3); `skip` drops",
            "  that step's update and counts it.",
            "- `seed`: seeds the run's `rng` when there is no `rng` section (a different `rng.seed` beside it is an error).",
            "- `recipe`: the recipe class, as NeMo AutoModel names it; another method's recipe is an error.",
            "- `contiguous_grads`, `trim_cpu_heap`: CPU-memory settings that leave the numbers unchanged",
            "  (see the SmolLM2 recipes' comments).",
            "- `nvtx`: accepted only as false.", ""]

    out += ["## Built sections", "",
            "Each holds a `_target_` and that target's arguments. The arguments are checked against the",
            "target's signature as its source declares it; the target passes the import gate.", "",
            "| section | methods |", "|---|---|"]
    built: dict[str, list[str]] = {}
    for m in methods:
        for section in schemas[m].built:
            built.setdefault(section, []).append(m)
    for section in sorted(built):
        out.append(f"| `{section}` | {', '.join(built[section])} |")
    out.append("")
    for section in sorted(BUILT_DEFAULTS):
        module, name = BUILT_DEFAULTS[section]
        cls = getattr(importlib.import_module(module), name)
        rows = _dataclass_rows(cls) if dataclasses.is_dataclass(cls) else _signature_fields(cls)
        out += [f"### `{section}` (`{module}.{name}`)", "", _clean((inspect.getdoc(cls) or "").split("\n\n")[0]), ""]
        out += _field_table(rows, _meanings(cls, section)) + [""]

    out += ["## Open mappings and lists", "", "| section | kind | methods |", "|---|---|---|"]
    seen: dict[tuple[str, str], list[str]] = {}
    for m in methods:
        for section in schemas[m].open:
            seen.setdefault((section, "open mapping"), []).append(m)
        for section in schemas[m].lists:
            seen.setdefault((section, "list"), []).append(m)
    for (section, kind), where in sorted(seen.items()):
        out.append(f"| `{section}` | {kind} | {', '.join(where)} |")
    extra = sorted({(s, k) for sch in schemas.values() for s, keys in sch.extra_keys.items() for k in keys})
    if extra:
        out += ["", "Keys a builder reads beside a target's own arguments: " + ", ".join(f"`{s}.{k}`" for s, k in extra)
                + "."]
    out += ["", "## Refused sections", "", "| section | method | why |", "|---|---|---|"]
    for section in every:
        reasons: dict[str, list[str]] = {}
        for m in methods:
            if section in schemas[m].refused:
                reasons.setdefault(schemas[m].refused[section], []).append(m)
        for reason, where in reasons.items():
            out.append(f"| `{section}` | {', '.join(where)} | {_clean(reason)} |")
    return "\n".join(out) + "\n"


def _dataclass_rows(cls: type) -> list[tuple[str, str, str]]:
    from nemo_like.cli_info import _dataclass_fields

    return _dataclass_fields(cls)


# ------------------------------------------------------------------------------------------------------ main


def pages() -> dict[Path, str]:
    return {CONFIG_PAGE: config_page(), ERRORS_PAGE: errors_page()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed page differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"{path.relative_to(REPO)} is out of date: run python tools/gen_config_reference.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
