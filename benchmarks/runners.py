"""The contenders: each trains the workload for its steps in this process and reports what it did, step by step.

Every runner returns the same record: the wall-clock end of each optimizer step (from the
start of the training loop, so data loading, logging and the step itself all count), the
real (non-padding) tokens, label tokens and document lengths of each step, and the loss
each step logged.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from nemo_like.components.datasets.llm.packed_sequence import document_lengths as documents
from workload import Workload, heldout_loss, read_tokens

RUNNERS = ("nemo_like_padded", "nemo_like_packed", "hf_trainer", "trl_defaults", "trl_tuned", "trl_padding_free")
LABELS = {
    "nemo_like_padded": "(a) nemo_like, padded",
    "nemo_like_packed": "(b) nemo_like, packed",
    "hf_trainer": "(c) transformers.Trainer + PEFT",
    "trl_defaults": "(d) TRL SFTTrainer, defaults",
    "trl_tuned": "(e) TRL SFTTrainer, tuned",
    "trl_padding_free": "(f) TRL SFTTrainer, tuned, padding-free without packing",
}


class StepLog:
    """What a run did: when each step ended, and the documents, label tokens and loss of each.

    Batches are noted in the order they are collated and grouped ``micro_batches`` to a
    step afterwards: a loader that fetches one batch ahead (accelerate's does) would
    otherwise credit a step with its successor's batch.
    """

    def __init__(self, micro_batches: int = 1) -> None:
        self.micro_batches = micro_batches
        self.start = 0.0
        self.ends: list[float] = []
        self.batches: list[tuple[list[int], int]] = []
        self.losses: list[float] = []

    def add_batch(self, batch: dict[str, torch.Tensor]) -> None:
        self.batches.append((documents(batch), int((batch["labels"] != -100).sum())))

    def end_step(self, loss: float | None = None) -> None:
        self.ends.append(time.perf_counter() - self.start)
        if loss is not None:
            self.losses.append(float(loss))

    def record(self) -> dict[str, Any]:
        steps, k = len(self.ends), self.micro_batches
        groups = [self.batches[i * k : (i + 1) * k] for i in range(steps)]
        return {"step_end_s": self.ends, "docs": [[n for docs, _ in g for n in docs] for g in groups],
                "label_tokens": [sum(labels for _, labels in g) for g in groups], "losses": self.losses[:steps]}


# ---------------------------------------------------------------- (a), (b): the library's own recipe
def run_nemo_like(w: Workload, packed: bool) -> dict[str, Any]:
    from workload import COLUMNS

    from nemo_like.config.loader import ConfigNode
    from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    log = StepLog(micro_batches=w.packs_per_step // w.packs_per_micro_batch if packed else 1)

    class TimedRecipe(TrainFinetuneRecipeForNextTokenPrediction):
        """The recipe unchanged; it only notes each step's batches and when the step ended."""

        def _run_train_optim_step(self, batches):  # noqa: ANN001, ANN202 - the recipe's signature
            for batch in batches:
                log.add_batch(batch)
            metrics = super()._run_train_optim_step(batches)
            log.end_step(metrics["loss"])
            return metrics

    rows = w.packs_per_step if packed else w.docs_per_step
    local = w.packs_per_micro_batch if packed else w.docs_per_step
    raw: dict[str, Any] = {
        "model": {"_target_": "nemo_like.NeMoAutoModelForCausalLM.from_pretrained",
                  "pretrained_model_name_or_path": w.model_dir, "torch_dtype": "float32",
                  "fused_swiglu": w.extra.get("nemo_like_fused_swiglu", True)},
        "peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig", "match_all_linear": True,
                 "dim": w.lora_r, "alpha": w.lora_alpha, "dropout": 0.0, "lora_A_init": "kaiming"},
        "step_scheduler": {"global_batch_size": rows, "local_batch_size": local, "val_every_steps": None,
                           **({"num_epochs": 1, "max_steps": None} if w.epoch else {"max_steps": w.steps})},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": w.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                      "weight_decay": 0.0},
        "clip_grad_norm": {"max_norm": w.max_grad_norm},
        "dataset": {"_target_": "nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset."
                                "ColumnMappedTextInstructionDataset",
                    "path_or_dataset_id": w.train_jsonl, "use_hf_chat_template": True, "column_mapping": COLUMNS,
                    "limit_dataset_samples": w.train_docs},
        "dataloader": {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader", "shuffle": False},
        "loss_fn": {"_target_": w.extra.get("nemo_like_loss", "nemo_like.components.loss.linear_ce.FusedLinearCrossEntropy")},
        "checkpoint": {"enabled": False},
        "rng": {"_target_": "nemo_like.components.training.rng.StatefulRNG", "seed": w.seed, "ranked": True},
        "disable_progress_bar": True,
        "contiguous_grads": w.extra.get("nemo_like_contiguous_grads", True),
        "trim_cpu_heap": w.extra.get("nemo_like_trim_cpu_heap", True),
    }
    if packed:
        raw["packed_sequence"] = {"packed_sequence_size": w.pack_size}
        raw["model"]["attn_implementation"] = w.extra.get("nemo_like_packed_attn", "packed_sdpa")
    recipe = TimedRecipe(ConfigNode(raw))
    recipe.setup()
    log.start = time.perf_counter()
    recipe.run_train_validation_loop()
    return dict(log.record(), heldout_loss=heldout_loss(recipe.model, w.heldout_path))


# ---------------------------------------------------------------- (c), (d), (e): transformers and TRL
def _hf_common(w: Workload, out_dir: str) -> dict[str, Any]:
    """The settings that make the runs comparable: steps (or one epoch), LR, order, clipping, one log line a step."""
    steps = {"num_train_epochs": 1, "max_steps": -1} if w.epoch else {"max_steps": w.steps}
    return {"output_dir": out_dir, **steps, "learning_rate": w.lr, "lr_scheduler_type": "constant",
            "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": w.max_grad_norm, "adam_epsilon": 1e-8,
            "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": w.seed, "disable_tqdm": True,
            "train_sampling_strategy": "sequential", "dataloader_num_workers": 0,
            "use_cpu": not torch.cuda.is_available()}


def _lora_config(w: Workload) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def _load_model(w: Workload) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(w.model_dir, dtype=torch.float32, attn_implementation="sdpa")


def _timed_callback(log: StepLog, on_logs: Any = None) -> Any:
    """A TrainerCallback noting when each step ended and its loss; ``on_logs(logs)`` sees every logged dict."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201, ARG002
            log.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201, ARG002
            log.end_step()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201, ARG002
            if logs and "loss" in logs:
                log.losses.append(float(logs["loss"]))
            if logs and on_logs is not None:
                on_logs(logs)

    return StepTimer()


def _recording(collate: Callable, log: StepLog) -> Callable:
    def wrapped(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(features)
        log.add_batch(batch)
        return batch

    return wrapped


def run_hf_trainer(w: Workload) -> dict[str, Any]:
    """transformers.Trainer + PEFT LoRA, padded batches, the library defaults otherwise (fp32, no checkpointing)."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    log = StepLog()
    tokenizer = AutoTokenizer.from_pretrained(w.model_dir)
    rows = [dict(r, attention_mask=[1] * len(r["input_ids"])) for r in read_tokens(w.tokens_path)]
    model = get_peft_model(_load_model(w), _lora_config(w))
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(**_hf_common(w, out), per_device_train_batch_size=w.docs_per_step)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=_recording(collate, log), callbacks=[_timed_callback(log)])
        trainer.train()
    return dict(log.record(), heldout_loss=heldout_loss(trainer.model, w.heldout_path))


def run_trl(w: Workload, tuned: bool, padding_free: bool = False) -> dict[str, Any]:
    """TRL SFTTrainer on the same token ids and labels.

    Defaults: what ``SFTConfig`` gives (gradient checkpointing, bf16 autocast, padded
    batches). Tuned: what an expert would change on this machine: no gradient
    checkpointing, fp32 (bf16 is slower on a CPU without bf16 units), TRL's own packing
    (best-fit-decreasing packs, padding-free rows) with the same tokens per step.
    Padding-free: tuned, but the padded contenders' documents a step laid end to end in one
    row without packing (``padding_free=True``, positions restarting per document).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    log = StepLog(micro_batches=w.packs_per_step // w.packs_per_micro_batch if tuned else 1)
    tokenizer = AutoTokenizer.from_pretrained(w.model_dir)
    dataset = Dataset.from_list(read_tokens(w.tokens_path))
    with tempfile.TemporaryDirectory() as out:
        if padding_free:
            args = SFTConfig(**_hf_common(w, out), per_device_train_batch_size=w.docs_per_step, padding_free=True,
                             max_length=None, gradient_checkpointing=False, bf16=False)
        elif tuned:
            args = SFTConfig(**_hf_common(w, out), per_device_train_batch_size=w.packs_per_micro_batch,
                             gradient_accumulation_steps=w.packs_per_step // w.packs_per_micro_batch, packing=True,
                             max_length=w.pack_size, gradient_checkpointing=False, bf16=False)
        else:
            args = SFTConfig(**_hf_common(w, out), per_device_train_batch_size=w.docs_per_step)
        trainer = SFTTrainer(model=_load_model(w), args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_lora_config(w), callbacks=[_timed_callback(log)])
        trainer.data_collator = _recording(trainer.data_collator, log)
        trainer.train()
    return dict(log.record(), heldout_loss=heldout_loss(trainer.model, w.heldout_path))


def _require(*modules: str) -> None:
    """The baselines need the bench extra; say so in one line instead of an ImportError deep in a worker."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not installed; pip install 'nemo_like[bench]'")


def run(name: str, w: Workload) -> dict[str, Any]:
    if name == "hf_trainer":
        _require("peft", "accelerate")
    elif name in ("trl_defaults", "trl_tuned", "trl_padding_free"):
        _require("trl", "peft", "accelerate")
    torch.set_num_threads(w.threads)
    torch.manual_seed(w.seed)
    if name == "nemo_like_padded":
        return run_nemo_like(w, packed=False)
    if name == "nemo_like_packed":
        return run_nemo_like(w, packed=True)
    if name == "hf_trainer":
        return run_hf_trainer(w)
    if name in ("trl_defaults", "trl_tuned", "trl_padding_free"):
        return run_trl(w, tuned=name != "trl_defaults", padding_free=name == "trl_padding_free")
    raise ValueError(f"runner: {name!r} is not one of {list(RUNNERS)}")
