"""The parts of a vision-language model, for freezing and for keeping LoRA on the language model.

transformers 5 lays VLMs out alike: ``model.vision_tower`` / ``model.vision_model`` /
``model.visual`` (the image encoder), a projector beside it or inside it
(``model.multi_modal_projector``, ``model.connector``, ``model.visual.merger``),
``model.language_model`` / ``model.text_model``, and ``lm_head``. Finding the parts
by these names, not per architecture, covers LLaVA, Idefics3/SmolVLM, Qwen2/2.5/3-VL,
Gemma3, PaliGemma, Mistral3 and Llama4 alike.

Freezing follows NeMo AutoModel's ``freeze_config`` (``freeze_vision_tower`` defaults
to True, ``freeze_language_model`` to False) with two choices of its own: the
projector is never frozen by these flags (NeMo AutoModel freezes Qwen's ``merger``
only because it sits inside ``visual``; here every architecture trains its
projector, which is what LLaVA-style stage-1 training needs when both the tower and
the language model are frozen), and ``freeze_embeddings``, which NeMo AutoModel's
YAMLs carry but do not act on, freezes the input token embeddings. As there, freezing
the language model leaves an untied ``lm_head`` trainable; a tied one shares the
embedding weight and follows it.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger("nemo_like")

VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger", "deepstack_merger_list",
                   "projector")
LANGUAGE_MODEL_NAMES = ("language_model", "text_model", "llm")
PARTS = ("vision_tower", "projector", "language_model", "embeddings", "lm_head")


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _shallowest(names: list[str]) -> list[str]:
    """The names at the smallest depth (a nested ``vision_model`` inside ``vision_tower`` is not another tower)."""
    if not names:
        return []
    depth = min(n.count(".") for n in names)
    return [n for n in names if n.count(".") == depth]


def _name_of(model: nn.Module, target: nn.Module | None) -> list[str]:
    if target is None or target is model:
        return []
    return [name for name, module in model.named_modules() if module is target][:1]


def _vision_tower(model: nn.Module) -> list[str]:
    return _shallowest([n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in VISION_TOWER_NAMES])


def _projector(model: nn.Module, tower: list[str]) -> list[str]:
    """Projector modules that sit beside the vision tower (or beside an ancestor of it) or directly inside it."""
    found = []
    for name, _ in model.named_modules():
        parent, _, leaf = name.rpartition(".")
        beside = parent == "" or any(t.startswith(parent + ".") for t in tower)
        if leaf in PROJECTOR_NAMES and (beside or parent in tower) and not _under(name, found):
            found.append(name)
    return found


def _language_model(model: nn.Module, tower: list[str]) -> list[str]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    named = _name_of(model, decoder)
    if named and not any(_under(t, named) for t in tower):
        return named
    return _shallowest([n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in LANGUAGE_MODEL_NAMES])


def vlm_parts(model: nn.Module) -> dict[str, list[str]]:
    """Module-name prefixes of each part: vision_tower, projector, language_model, embeddings, lm_head.

    A prefix ``p`` covers the module ``p`` and every name starting with ``p.``. The
    projector may lie inside the vision tower (Qwen-VL's ``visual.merger``); the
    embeddings lie inside the language model.
    """
    tower = _vision_tower(model)
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    parts = {
        "vision_tower": tower,
        "projector": _projector(model, tower),
        "language_model": _language_model(model, tower),
        "embeddings": _name_of(model, get_in() if callable(get_in) else None),
        "lm_head": _name_of(model, get_out() if callable(get_out) else None),
    }
    missing = [part for part in PARTS if not parts[part]]
    if missing:
        raise ValueError(
            f"{type(model).__name__}: cannot find its {', '.join(missing)} (looked for vision tower "
            f"{'/'.join(VISION_TOWER_NAMES)}, projector {'/'.join(PROJECTOR_NAMES)}, language model "
            f"{'/'.join(LANGUAGE_MODEL_NAMES)}, and the input/output embeddings); is it a vision-language model?"
        )
    return parts


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter elements (a tied weight counts once)."""
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def apply_freeze_config(
    model: nn.Module,
    freeze_vision_tower: bool = True,
    freeze_embeddings: bool = False,
    freeze_language_model: bool = False,
) -> dict[str, int]:
    """Set ``requires_grad=False`` on the chosen parts (NeMo AutoModel's ``freeze_config`` fields).

    Only freezes, never unfreezes, so it composes with LoRA or quantization that froze
    weights before. The projector is left as it is. Returns and logs the counts.
    """
    parts = vlm_parts(model)
    chosen = [part for part, flag in (("vision_tower", freeze_vision_tower), ("embeddings", freeze_embeddings),
                                      ("language_model", freeze_language_model)) if flag]
    frozen = [prefix for part in chosen for prefix in parts[part]]
    for name, param in model.named_parameters():
        if _under(name, frozen) and not _under(name, parts["projector"]):
            param.requires_grad_(False)
    counts = parameter_counts(model)
    logger.info("freeze_config: froze %s; %s of %s parameters trainable (%.1f%%)",
                ", ".join(chosen) or "nothing", f"{counts['trainable']:,}", f"{counts['total']:,}",
                100.0 * counts["trainable"] / max(counts["total"], 1))
    return counts


def language_model_lora_excludes(model: nn.Module) -> list[str]:
    """``PeftConfig.exclude_modules`` globs that keep LoRA off the vision tower, projector and lm_head.

    With ``match_all_linear`` they leave exactly the language model's linear layers adapted.
    """
    parts = vlm_parts(model)
    prefixes = parts["vision_tower"] + parts["projector"] + parts["lm_head"]
    return [glob for prefix in prefixes for glob in (prefix, f"{prefix}.*")]
