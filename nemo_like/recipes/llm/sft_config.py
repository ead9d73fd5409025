"""The sections of the SFT (and pretraining) recipe: what its YAML may hold, each with a type.

``check_sft_config`` runs before torch or transformers are imported, so a typo, a wrong type,
an unknown or missing section or an impossible batch layout is reported within a second.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

from nemo_like.components.checkpoint.config import LATEST, CheckpointingConfig
from nemo_like.components.checkpoint.pointers import read_pointer
from nemo_like.components.distributed.config import DistributedConfig
from nemo_like.config.errors import ConfigError
from nemo_like.config.typed_sections import RecipeSchema, check_recipe, located
from nemo_like.recipes.sections import (
    AutocastSection, ClipGradNormSection, DistEnvSection, GenerationEvalSection, LRSchedulerSection,
    PackedSequenceSection, StepSchedulerSection,
)
from nemo_like.recipes.sections import NEFTuneSection, QATSection
from nemo_like.recipes.sections import CompileSection, FP8Section

__all__ = ["SFT_SCHEMA", "SFTSections", "check_sft_config", "check_training_config"]

SFT_SCHEMA = RecipeSchema(
    name="SFT",
    built=frozenset({"model", "dataset", "validation_dataset", "optimizer", "loss_fn", "peft", "rng", "tokenizer",
                     "distributed_config", "dataloader", "validation_dataloader"}),
    required=frozenset({"model", "dataset", "optimizer", "step_scheduler"}),
    typed={"step_scheduler": StepSchedulerSection, "checkpoint": CheckpointingConfig,
           "lr_scheduler": LRSchedulerSection, "clip_grad_norm": ClipGradNormSection, "dist_env": DistEnvSection,
           "distributed": DistributedConfig, "packed_sequence": PackedSequenceSection, "autocast": AutocastSection,
           "generation_eval": GenerationEvalSection, "neftune": NEFTuneSection, "qat": QATSection,
           "compile": CompileSection, "fp8": FP8Section},
    scalars={"contiguous_grads": (bool, False), "trim_cpu_heap": (bool, False),
             "disable_progress_bar": (bool, False), "nan_policy": (Literal["error", "skip"], "error"),
             "seed": (int | None, None), "recipe": (str | dict | None, None), "nvtx": (bool, False)},
    open=frozenset({"quantization", "evaluation", "wandb", "mlflow", "tensorboard",
                   "ci"}),  # ci: a CI system's metadata about the recipe (owner, time, nodes); not read here
    lists=frozenset({"callbacks"}),
    defaulted=frozenset({"checkpoint", "clip_grad_norm", "dist_env", "distributed", "autocast"}),
    extra_keys={"dataloader": frozenset({"group_by_length"}), "validation_dataloader": frozenset({"group_by_length"})},
    refused={
        "parallelizer": "a custom (MoE) parallelizer is not supported here; the distributed section's strategy "
                        "shards the model (remove the section)",
        "autopipeline": "pipeline parallel is not supported yet; remove the section and use distributed.pp_size: 1",
        "benchmark": "not a section of the training recipe; speed is measured by benchmarks/sft_throughput.py",
    },
)


@dataclass
class SFTSections:
    """The typed plain sections of an SFT recipe; the built ones stay ConfigNodes with a ``_target_``."""

    step_scheduler: StepSchedulerSection
    checkpoint: CheckpointingConfig
    lr_scheduler: LRSchedulerSection | None
    clip_grad_norm: ClipGradNormSection
    dist_env: DistEnvSection
    distributed: DistributedConfig
    packed_sequence: PackedSequenceSection | None
    autocast: AutocastSection
    generation_eval: GenerationEvalSection | None
    contiguous_grads: bool
    trim_cpu_heap: bool
    disable_progress_bar: bool
    nan_policy: str
    neftune: NEFTuneSection | None = None
    qat: QATSection | None = None
    compile: CompileSection | None = None
    fp8: FP8Section | None = None
    seed: int | None = None  # the run's RNG seed when there is no rng section
    recipe: str | dict | None = None
    nvtx: bool = False


# ``recipe:`` values naming this recipe: its class name, or its import path.
SFT_RECIPE_NAMES = ("TrainFinetuneRecipeForNextTokenPrediction",
                    "nemo_like.recipes.llm.train_ft.TrainFinetuneRecipeForNextTokenPrediction")


def _check_recipe_fields(cfg: Any, sections: Any, recipe_names: tuple[str, ...]) -> None:
    """``recipe`` names this recipe, ``nvtx`` is off, ``seed`` agrees with ``rng.seed``, and
    ``model.backend`` asks only for kernels that exist here, all before anything loads."""
    sources = getattr(cfg, "sources", None)
    recipe = sections.recipe
    name = recipe.get("_target_") if hasattr(recipe, "get") else recipe
    if recipe is not None and name not in recipe_names:
        raise ConfigError(f"{located('recipe', sources)}: {name!r} is not this recipe; this entry runs "
                          f"{recipe_names[0]} (other recipes have their own entry scripts)")
    if sections.nvtx:
        raise ConfigError(f"{located('nvtx', sources)}: NVTX profiling ranges are not supported here; "
                          "use nvtx: false (profile with torch.profiler)")
    written = cfg.get("rng.seed", None) if "rng" in cfg else None
    if sections.seed is not None and written is not None and written != sections.seed:
        raise ConfigError(f"{located('seed', sources)}: {sections.seed} contradicts rng.seed {written}; give one")
    backend = cfg.get("model.backend", None)
    if backend is not None:
        from nemo_like.components.models.common.backend import BackendConfig

        try:
            BackendConfig.from_section(backend)
        except ConfigError as err:
            key = str(err).split(":", 1)[0]
            raise ConfigError(located(key, sources) + ":" + str(err).split(":", 1)[1]) from None


def check_sft_config(cfg: Any, world_size: int | None = None) -> SFTSections:
    """Every section of ``cfg`` checked; with ``world_size`` (default: ``$WORLD_SIZE``) the batch layout too."""
    return check_training_config(cfg, SFT_SCHEMA, SFTSections, SFT_RECIPE_NAMES, world_size)


def check_training_config(cfg: Any, schema: RecipeSchema, sections_type: type, recipe_names: tuple[str, ...],
                          world_size: int | None = None) -> Any:
    """The checks every training method's config gets: its schema's sections typed, the recipe fields,
    local paths, the resume pointer, and the batch layout against the ranks launched."""
    typed = check_recipe(cfg, schema)
    absent = {f.name: None for f in dataclasses.fields(sections_type) if f.name not in typed}  # not this method's
    sections = sections_type(**absent, **typed)
    _check_recipe_fields(cfg, sections, recipe_names)
    _check_local_paths(cfg)
    _check_resume_pointer(sections.checkpoint)
    known_world = world_size is not None or "WORLD_SIZE" in os.environ
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
    layout = sections.distributed
    model_parallel = layout.tp_size * layout.cp_size
    dp = layout.dp_size or max(world // model_parallel, 1)
    if known_world and dp * model_parallel != world:
        raise ConfigError(
            f"{located('distributed', cfg.sources)}: dp_size x tp_size x cp_size = {dp} x {layout.tp_size} x "
            f"{layout.cp_size} does not match the {world} ranks launched"
        )
    if dp * model_parallel == world:
        try:
            sections.step_scheduler.check_layout(dp)
        except ConfigError as err:
            where = located("step_scheduler.global_batch_size", cfg.sources)
            raise ConfigError(where + ":" + str(err).split(":", 1)[1]) from None
    return sections


_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".gguf", ".safetensors")
_PATH_KEYS = ("model.pretrained_model_name_or_path", "tokenizer.pretrained_model_name_or_path",
              "dataset.path_or_dataset_id", "validation_dataset.path_or_dataset_id",
              "generation_eval.path_or_dataset_id")


def _check_local_paths(cfg: Any) -> None:
    """A model or data path that is plainly local (absolute, ``./``, ``~``, a data-file suffix) must exist.

    Hub ids (``org/name``) are left to the loaders; a missing local file is said now, not after imports.
    """
    for key in _PATH_KEYS:
        value = cfg.get(key)
        for i, path in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if not isinstance(path, str) or not path.strip():
                continue
            local = path.startswith(("/", "./", "../", "~")) or path.lower().endswith(_LOCAL_SUFFIXES)
            if local and not os.path.exists(os.path.expanduser(path)):
                where = located(key if not isinstance(value, (list, tuple)) else f"{key}.{i}", cfg.sources)
                raise ConfigError(f"{where}: '{path}' not found")


def _check_resume_pointer(checkpoint: CheckpointingConfig) -> None:
    """A garbled ``LATEST``, or one naming a missing directory, is said now; the files are checked
    against their manifest when the checkpointer opens them."""
    if checkpoint.enabled and checkpoint.restore_from == LATEST:
        root = os.path.abspath(os.path.expanduser(checkpoint.checkpoint_dir))
        if os.path.isdir(root):
            read_pointer(root, LATEST)
