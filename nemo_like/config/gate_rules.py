"""What a recipe may call: the reviewed targets and the callables that stay refused.

A YAML is untrusted, so the gate admits callables, not packages: nemo_like's component
targets, and third-party constructors that were reviewed one kind at a time (optimizers,
modules, data loaders, transformers models/configs/tokenizers, PEFT configs). The rules
live here, apart from the resolving code, so that a review reads only the rules.

Patterns are import paths in which ``*`` stands for one name and ``**`` for one or more.
Predicates run on the resolved object, after its import, so they may import torch.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable

__all__ = [
    "ALLOW_PICKLE_ENV", "DENIED_NAMES", "DENIED_TARGETS", "NEMO_LIKE_TARGETS", "REVIEWED_RULES",
    "TRUST_REMOTE_CODE_ENV", "UNSAFE_TARGETS_ENV", "USER_MODULES_ENV", "Rule", "canonical_name",
    "pattern_matches",
]

# Any module, `path/to/file.py:fn` targets; the deny list below still applies.
USER_MODULES_ENV = "NEMO_LIKE_ENABLE_USER_MODULES"
# The gate off: every import path, the deny list included (for YAMLs you wrote yourself).
UNSAFE_TARGETS_ENV = "NEMO_LIKE_ALLOW_UNSAFE_TARGETS"
# `trust_remote_code: true` (Python files shipped with a model or data set run on load).
TRUST_REMOTE_CODE_ENV = "NEMO_LIKE_TRUST_REMOTE_CODE"
# `weights_only: false`, `allow_pickle: true`, `pickle_module` (unpickling runs code).
ALLOW_PICKLE_ENV = "NEMO_LIKE_ALLOW_PICKLE"

# nemo_like's component targets, by where they are defined (module + qualified name):
# datasets, collaters, prompt functions, losses, rewards and judges, PEFT/distributed configs, RNG, schedulers,
# callbacks, trackers and the model/tokenizer loaders. Machinery is on the deny list below.
NEMO_LIKE_TARGETS: tuple[str, ...] = (
    "nemo_like._transformers.auto_model.NeMoAutoModelForCausalLM.from_pretrained",
    "nemo_like._transformers.auto_model.NeMoAutoModelForCausalLM.from_config",
    "nemo_like._transformers.auto_vlm.NeMoAutoModelForImageTextToText.from_pretrained",
    "nemo_like._transformers.auto_vlm.NeMoAutoModelForImageTextToText.from_config",
    "nemo_like._transformers.tokenizer.NeMoAutoTokenizer.from_pretrained",
    "nemo_like._transformers.tokenizer.build_tokenizer",
    "nemo_like.components.datasets.llm.*.*",
    "nemo_like.components.datasets.utils.*",
    "nemo_like.components.datasets.vlm.conversation_dataset.VLMConversationDataset",
    "nemo_like.components.datasets.vlm.column_mapped_dataset.ColumnMappedVLMDataset",
    "nemo_like.components.datasets.vlm.datasets.*",
    "nemo_like.components.datasets.vlm.collate_fns.*",
    "nemo_like.components.datasets.mixture.make_dataset_mixture",
    "nemo_like.components.datasets.mixture.MapDatasetMixture",
    "nemo_like.components.datasets.mixture.IterableDatasetMixture",
    "nemo_like.components.datasets.length_grouped_sampler.LengthGroupedSampler",
    "nemo_like.components.loss.*.*",
    "nemo_like.components.rewards.*.*",
    "nemo_like.components._peft.lora.PeftConfig",
    "nemo_like.components.quantization.qlora.create_bnb_config",
    "nemo_like.components.quantization.qat.QATConfig",
    "nemo_like.components.models.common.backend.BackendConfig",
    "nemo_like.components.models.common.BackendConfig",
    "nemo_like.components.models.common.utils.BackendConfig",
    "nemo_like.components.distributed.fsdp2.FSDP2Manager",
    "nemo_like._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained",
    "nemo_like.components.distributed.config.*",
    "nemo_like.components.distributed.tp_plans.llama_tp_plan",
    "nemo_like.components.training.rng.StatefulRNG",
    "nemo_like.components.training.step_scheduler.StepScheduler",
    "nemo_like.components.optim.scheduler.*",
    "nemo_like.components.checkpoint.config.CheckpointingConfig",
    "nemo_like.components.callbacks.early_stopping.EarlyStopping",
    "nemo_like.components.tuning.pruning.OptunaPruning",
    "nemo_like.components.callbacks.json_metrics.JSONMetricsLogger",
    "nemo_like.components.callbacks.progress_bar.ProgressBar",
    "nemo_like.components.loggers.jsonl.JSONLLogger",
    "nemo_like.components.loggers.wandb.WandbLogger",
    "nemo_like.components.loggers.mlflow.MLflowLogger",
    "nemo_like.components.loggers.tensorboard.TensorBoardLogger",
)

_RUNS = "runs commands or processes"
_CODE = "imports or runs arbitrary code"
_WRITES = "writes or deletes files"
_PICKLE = "unpickles data, which runs code"
_REACH = "reaches any object or builds calls to any callable"
_NET = "downloads or uploads data"
_OURS = "is nemo_like machinery (CLI, recipes, config, checkpoints, launch, evaluation, plots), not a component"

# Refused by the name of the path as written and of its definition, whatever else is opted
# in; only UNSAFE_TARGETS_ENV lifts this list. A prefix covers the names below it.
DENIED_TARGETS: dict[str, str] = {
    **dict.fromkeys(("os", "posix", "nt"), "runs commands or changes files"),
    **dict.fromkeys(("subprocess", "pty", "multiprocessing", "concurrent",
                     "asyncio", "signal", "webbrowser", "platform"), _RUNS),
    **dict.fromkeys(("shutil", "tempfile", "io", "pathlib", "zipfile", "tarfile", "fileinput",
                     "fsspec", "sqlite3", "logging"), _WRITES),
    "builtins": "evaluates code or reaches any object (eval, exec, open, getattr)",
    **dict.fromkeys(("sys", "functools", "operator", "inspect", "types", "gc", "ast",
                     "typing", "abc", "weakref", "contextlib"), _REACH),
    **dict.fromkeys(("importlib", "pkgutil", "runpy", "code", "codeop", "ctypes", "pdb", "site",
                     "setuptools", "pip", "distutils", "zipimport"), _CODE),
    **dict.fromkeys(("pickle", "_pickle", "copyreg", "marshal", "shelve", "dill", "cloudpickle",
                     "joblib", "yaml", "numpy.load"), _PICKLE),
    **dict.fromkeys(("socket", "ssl", "urllib", "http", "ftplib", "smtplib", "requests",
                     "huggingface_hub", "transformers.utils.hub"), _NET),
    **dict.fromkeys(("torch.save", "torch.export", "torch.onnx", "torch.profiler", "torch.utils.hipify",
                     "torch.utils.tensorboard", "torch.distributed.checkpoint"), _WRITES),
    **dict.fromkeys(("torch.load", "torch.serialization", "torch.utils.model_zoo"), _PICKLE),
    **dict.fromkeys(("torch.hub", "torch.ops", "torch.classes", "torch.library", "torch.package",
                     "torch.jit", "torch.compile", "torch.compiler", "torch.utils.cpp_extension",
                     "torch.testing", "torch.distributed.rpc", "transformers.dynamic_module_utils",
                     "transformers.utils.import_utils", "transformers.pipeline", "transformers.pipelines",
                     "transformers.hf_argparser"), _CODE),
    **dict.fromkeys(("torch.multiprocessing", "torch.utils.collect_env", "torch.utils.bottleneck",
                     "torch.distributed.run", "torch.distributed.launch", "torch.distributed.launcher",
                     "torch.distributed.elastic", "transformers.commands", "transformers.testing_utils",
                     "datasets.commands"), _RUNS),
    **dict.fromkeys(("nemo_like.cli", "nemo_like.recipes", "nemo_like.config", "nemo_like.eval_tasks",
                     "nemo_like._transformers.embedded", "nemo_like.components.checkpoint.checkpointing",
                     "nemo_like.components.checkpoint.dcp", "nemo_like.components.distributed.fork_launcher",
                     "nemo_like.components.distributed.dry_run", "nemo_like.components.distributed.init",
                     "nemo_like.components.distributed.tp_plans.get_tp_plan", "nemo_like.components.eval",
                     "nemo_like.components.plotting", "nemo_like.components._peft.merge",
                     "nemo_like.components._peft.adapter_io",
                     "nemo_like.components.datasets.llm.prompt_template",
                     "nemo_like.components.datasets.llm.packed_attention",
                     "nemo_like.components.datasets.llm.row_stream", "nemo_like.components.callbacks.generation_eval",
                     "nemo_like.components.callbacks.lm_eval_after_training", "nemo_like.components.callbacks.loss_plot",
                     "nemo_like.components.loggers.optional", "nemo_like.components.loggers.metric_loggers"),
                    _OURS),
}

# Refused by the last name of the path (a method reached on any class): writers and loaders.
DENIED_NAMES: dict[str, str] = {
    **dict.fromkeys(("save", "save_file", "save_model", "save_pretrained", "save_to_disk", "save_vocabulary",
                     "to_json_file", "to_json", "to_csv", "to_parquet", "to_sql", "dump", "export"), _WRITES),
    **dict.fromkeys(("load", "loads", "load_library", "load_inline"), _PICKLE),
    **dict.fromkeys(("push_to_hub", "upload_file", "upload_folder"), _NET),
    **dict.fromkeys(("system", "popen", "spawn"), _RUNS),
    **dict.fromkeys(("exec", "eval"), _CODE),
}


@dataclass(frozen=True)
class Rule:
    """A reviewed third-party namespace: the paths it covers and the objects it admits there."""

    pattern: str
    admits: Callable[[Any], bool]
    what: str


# ------------------------------------------------------------------ predicates
def _subclass(obj: Any, *bases: type) -> bool:
    return inspect.isclass(obj) and issubclass(obj, bases)


def _optimizer_or_scheduler(obj: Any) -> bool:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    return _subclass(obj, Optimizer, LRScheduler, ReduceLROnPlateau)


def _module_or_parameter(obj: Any) -> bool:
    import torch

    return _subclass(obj, torch.nn.Module, torch.nn.Parameter)


def _data_loading(obj: Any) -> bool:
    import torch.utils.data as data

    return _subclass(obj, data.DataLoader, data.Sampler) or any(
        obj is fn for fn in (data.default_collate, data.default_convert)
    )


_FACTORIES = ("ones", "zeros", "full", "empty", "tensor", "arange", "linspace", "eye", "rand", "randn", "randint")


def _factory_or_dtype(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.dtype) or any(obj is getattr(torch, name) for name in _FACTORIES)


def _transformers_class(obj: Any) -> bool:
    if not inspect.isclass(obj) or not str(getattr(obj, "__module__", "")).startswith("transformers."):
        return False
    import transformers
    from transformers.utils.quantization_config import QuantizationConfigMixin

    kinds = tuple(
        getattr(transformers, name)
        for name in ("PreTrainedModel", "PretrainedConfig", "PreTrainedTokenizerBase", "ProcessorMixin",
                     "FeatureExtractionMixin", "ImageProcessingMixin", "GenerationConfig")
        if hasattr(transformers, name)
    )
    auto = obj.__module__.startswith("transformers.models.auto.") and obj.__name__.startswith("Auto")
    return auto or issubclass(obj, (*kinds, QuantizationConfigMixin))


def _loader_of(obj: Any, owner_ok: Callable[[Any], bool]) -> bool:
    """A ``from_pretrained`` / ``from_config`` classmethod, bound to an admitted class."""
    return (inspect.ismethod(obj) and obj.__name__ in ("from_pretrained", "from_config")
            and inspect.isclass(obj.__self__) and owner_ok(obj.__self__))


def _transformers_part(obj: Any) -> bool:
    return _transformers_class(obj) or _loader_of(obj, _transformers_class)


def _peft_config(obj: Any) -> bool:
    from peft.config import PeftConfigMixin

    return _subclass(obj, PeftConfigMixin)


def _optuna_sampler_or_pruner(obj: Any) -> bool:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    return _subclass(obj, BaseSampler) or _subclass(obj, BasePruner)


def _load_dataset(obj: Any) -> bool:
    import datasets

    return obj is datasets.load_dataset


REVIEWED_RULES: tuple[Rule, ...] = (
    Rule("torch.optim.**", _optimizer_or_scheduler, "optimizer and LR-scheduler classes"),
    Rule("torch.nn.**", _module_or_parameter, "torch.nn.Module subclasses and torch.nn.Parameter"),
    Rule("torch.utils.data.**", _data_loading, "DataLoader, samplers and default_collate"),
    Rule("torch.*", _factory_or_dtype, "tensor factories (ones, zeros, tensor, ...) and dtypes"),
    Rule("torchdata.stateful_dataloader.**", _data_loading, "StatefulDataLoader and its samplers"),
    Rule("transformers.**", _transformers_part,
         "model, config, tokenizer, processor and quantization-config classes and their from_pretrained/from_config"),
    Rule("peft.**", _peft_config, "PEFT config classes (LoraConfig, ...)"),
    Rule("datasets.**", _load_dataset, "datasets.load_dataset"),
    Rule("optuna.**", _optuna_sampler_or_pruner, "Optuna sampler and pruner classes (hyperparameter search)"),
)


# ------------------------------------------------------------------ names
@lru_cache(maxsize=None)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for part in pattern.split("."):
        parts.append(r"[^.]+(?:\.[^.]+)*" if part == "**" else r"[^.]+" if part == "*" else re.escape(part))
    return re.compile(r"\.".join(parts))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether dotted ``name`` fits ``pattern`` (``*`` one name, ``**`` one or more)."""
    return _pattern_regex(pattern).fullmatch(name) is not None


def canonical_name(obj: Any) -> str:
    """Where ``obj`` is defined: ``posix.system`` for ``torch.os.system``, whatever path reached it."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    if inspect.ismethod(obj) and inspect.isclass(obj.__self__):
        return f"{canonical_name(obj.__self__)}.{obj.__name__}"
    if inspect.ismethod(obj):
        obj = obj.__func__
    if inspect.isclass(obj) or inspect.isroutine(obj):
        module = getattr(obj, "__module__", None)
        name = getattr(obj, "__name__", None)
        if isinstance(module, str) and name and getattr(sys.modules.get(module), name, None) is obj:
            return f"{module}.{name}"  # builtins whose qualname is internal (torch.ones)
        qualname = getattr(obj, "__qualname__", None) or name or type(obj).__name__
        return f"{module}.{qualname}" if isinstance(module, str) and module else qualname
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
