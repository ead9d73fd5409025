"""Supervised fine-tuning for next-token prediction: set-up from YAML, then one readable loop."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import shlex
import signal
import sys
import time
from functools import partial
from typing import Any

import torch

from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointingConfig, drop_records_after
from nemo_like.components.checkpoint.step_aligned_loader import StepAlignedLoader
from nemo_like.components.datasets.llm.packed_sequence import (
    PackedSequence,
    attention_implementation,
    pack_dataset,
    prepare_packed_attention,
)
from nemo_like.components.datasets.utils import default_collater, packed_sequence_collater
from nemo_like.components.distributed.init import all_reduce_sum, initialize_distributed
from nemo_like.components.loggers.jsonl import JSONLLogger
from nemo_like.components.loggers.progress import ProgressReporter, peak_memory_gib
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.optim.scheduler import build_lr_scheduler
from nemo_like.components.training.rng import StatefulRNG
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.loader import ConfigNode, resolve_target

logger = logging.getLogger("nemo_like")

_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, so a replaced stream (a test's capture) never goes stale."""

    @property
    def stream(self):  # noqa: ANN201 - the logging API's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(is_main: bool) -> None:
    """Our lines only: one per step, none of the libraries' per-file progress bars."""
    import warnings

    import transformers

    log = logging.getLogger("nemo_like")
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(isinstance(h, _CurrentStderrHandler) for h in log.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*set_vital.*")


def _section(cfg: ConfigNode, name: str) -> ConfigNode | None:
    return cfg.get(name) if name in cfg else None


def _plain(node: Any) -> dict[str, Any]:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node or {})


class TrainFinetuneRecipeForNextTokenPrediction:
    """Builds every part named in the config, then trains with ``run_train_validation_loop``."""

    def __init__(self, cfg: ConfigNode) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.cfg
        dist_env = _plain(_section(cfg, "dist_env"))
        self.dist = initialize_distributed(dist_env.get("backend"), dist_env.get("timeout_minutes", 1))
        setup_logging(self.dist.is_main)
        self.device = self.dist.device
        self.rng = cfg.rng.instantiate() if "rng" in cfg else StatefulRNG(seed=42, ranked=True)

        self.model_id = cfg.get("model.pretrained_model_name_or_path")
        self.tokenizer = self._build_tokenizer()
        # Data before the model: a bad row stops the run in seconds, before anything is written.
        self.dataset = self._build_dataset("dataset")
        self.val_dataset = self._build_dataset("validation_dataset") if "validation_dataset" in cfg else None
        sched = _plain(cfg.step_scheduler)
        self.dataloader = StepAlignedLoader(
            self._build_dataloader("dataloader", self.dataset, sched["local_batch_size"], train=True)
        )
        self.val_dataloader = (
            self._build_dataloader("validation_dataloader", self.val_dataset, sched["local_batch_size"], train=False)
            if self.val_dataset is not None
            else None
        )
        self.step_scheduler = StepScheduler(**sched, dp_size=self.dist.world_size, dataloader=self.dataloader)

        self.model = self._build_model()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = cfg.optimizer.instantiate(params=trainable)
        self.lr_scheduler = (
            build_lr_scheduler(self.optimizer, self.step_scheduler.max_steps, **_plain(cfg.lr_scheduler))
            if "lr_scheduler" in cfg
            else None
        )
        self.loss_fn = cfg.loss_fn.instantiate() if "loss_fn" in cfg else MaskedCrossEntropy()
        self.max_grad_norm = cfg.get("clip_grad_norm.max_norm", None)
        self.autocast_dtype = self._autocast_dtype()

        ckpt = CheckpointingConfig(**_plain(_section(cfg, "checkpoint")))
        self.checkpointer = Checkpointer(ckpt, is_main=self.dist.is_main)
        root = self.checkpointer.root
        self.train_log = JSONLLogger(os.path.join(root, "training.jsonl"), enabled=self.dist.is_main)
        self.val_log = JSONLLogger(os.path.join(root, "validation.jsonl"), enabled=self.dist.is_main)
        self.generation_eval = _plain(_section(cfg, "generation_eval")) or None
        self.prior_train_losses = self._restore_checkpoint()

    def _restore_checkpoint(self) -> list[float]:
        """Continue from ``checkpoint.restore_from`` (default: LATEST when there is one); returns the losses so far.

        Weights (or the adapter), optimizer, LR and step schedules, the data position and
        the RNG come back as they were after the checkpoint's step, so the loss curve goes
        on exactly; the metric files lose records of steps that will now be re-run.
        """
        path = self.checkpointer.resume_path()
        if path is None:
            return []
        losses = self.checkpointer.load(
            path, self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
            step_scheduler=self.step_scheduler, dataloader=self.dataloader, rng=self.rng, peft_config=self.peft_config,
        )
        done = self.step_scheduler.step - 1
        if self.dist.is_main:
            for log in (self.train_log, self.val_log):
                drop_records_after(log.path, done)
        return list(losses.get("train", []))[: done + 1]

    def _build_tokenizer(self) -> Any:
        if "tokenizer" in self.cfg:
            return self.cfg.tokenizer.instantiate()
        from nemo_like._transformers.tokenizer import build_tokenizer

        if self.model_id is None:
            raise ValueError("model.pretrained_model_name_or_path: needed to build the tokenizer (or add a tokenizer section)")
        return build_tokenizer(self.model_id)

    def _build_dataset(self, name: str) -> Any:
        node = self.cfg.get(name)
        dataset = node.instantiate(tokenizer=self.tokenizer)
        packing = _plain(_section(self.cfg, "packed_sequence"))
        if packing:
            # Packing is a property of the run, not of the data: the same documents, fewer and fuller rows.
            if packing.get("pad_token_id") is None:
                pad_id = getattr(dataset, "pad_token_id", None)
                packing["pad_token_id"] = self.tokenizer.pad_token_id if pad_id is None else pad_id
            dataset = pack_dataset(dataset, **packing)
        return dataset

    def _build_dataloader(self, name: str, dataset: Any, batch_size: int, train: bool) -> Any:
        node = self.cfg.get(name) if name in self.cfg else ConfigNode(
            {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"}
        )
        collate = node.get("collate_fn", None)
        collate = resolve_target(collate, key=f"{name}.collate_fn") if isinstance(collate, str) else collate
        collate = collate or default_collater
        if isinstance(dataset, PackedSequence) and collate is default_collater:
            collate = packed_sequence_collater  # packs need the block-diagonal mask, not a padding mask
        if collate is packed_sequence_collater and not isinstance(dataset, PackedSequence):
            from nemo_like.config.loader import ConfigError

            raise ConfigError(f"{name}.collate_fn: packed_sequence_collater needs packed data; "
                              "add packed_sequence.packed_sequence_size (> 0) or use default_collater")
        pad_id = getattr(dataset, "pad_token_id", None)
        if pad_id is None:
            pad_id = self.tokenizer.pad_token_id
        if "pad_token_id" in inspect.signature(collate).parameters and pad_id is not None:
            collate = partial(collate, pad_token_id=pad_id)
        kwargs: dict[str, Any] = {"dataset": dataset, "batch_size": batch_size, "collate_fn": collate}
        if isinstance(dataset, torch.utils.data.IterableDataset):
            # A stream orders (and shards over ranks) itself; a sampler or shuffle does not apply.
            kwargs["shuffle"] = False
        elif self.dist.world_size > 1:
            from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

            shuffle = bool(node.get("shuffle", False)) and train
            kwargs["sampler"] = StatefulDistributedSampler(
                dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=shuffle, seed=self.rng.seed
            )
            kwargs["shuffle"] = None
        if node.get("group_by_length", False) and train:
            if "sampler" in kwargs or isinstance(dataset, (PackedSequence, torch.utils.data.IterableDataset)):
                logger.warning("%s.group_by_length: not applied to packed, streamed or multi-rank data", name)
            else:
                from nemo_like.components.datasets.length_grouped_sampler import LengthGroupedSampler, sample_lengths

                kwargs["sampler"] = LengthGroupedSampler(sample_lengths(dataset), batch_size, seed=self.rng.seed)
                kwargs["shuffle"] = False
        if "group_by_length" in node:  # ours, not a StatefulDataLoader argument
            node = ConfigNode({k: v for k, v in node.to_dict().items() if k != "group_by_length"}, path=name)
        if not train:
            kwargs["shuffle"] = False
        loader = node.instantiate(**{k: v for k, v in kwargs.items() if v is not None})
        return loader

    def _build_model(self) -> torch.nn.Module:
        quantized = self.cfg.get("quantization", None) is not None
        model = self._load_quantized_model() if quantized else self.cfg.model.instantiate()
        self.peft_config = None
        if "peft" in self.cfg:
            from nemo_like.components._peft.lora import apply_lora_to_linear_modules

            self.peft_config = self.cfg.peft.instantiate()
            count = apply_lora_to_linear_modules(model, self.peft_config)
            logger.info("LoRA applied to %d linear modules", count)
        if not quantized:  # bitsandbytes places its packed weights while loading
            model.to(self.device)
        # transformers' count unpacks 4-bit storage (two weights per byte); a plain sum would not.
        counter = getattr(model, "num_parameters", None)
        total = counter() if callable(counter) else sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        if self.dist.world_size > 1:
            model = self._shard(model)
        model.train()
        return model

    def _load_quantized_model(self) -> torch.nn.Module:
        """QLoRA: load the base through bitsandbytes and make its 4-bit layers safe to train through."""
        from nemo_like.components.quantization.qlora import create_bnb_config, prepare_model_for_qlora
        from nemo_like.config.loader import ConfigError

        if "peft" not in self.cfg:
            raise ConfigError("quantization: needs a peft section; quantized base weights cannot be trained directly")
        if self.dist.world_size > 1:
            raise ConfigError("quantization: FSDP2 cannot shard bitsandbytes layers; run QLoRA as a single process")
        try:
            bnb_config = create_bnb_config(_plain(self.cfg.quantization))
        except (ValueError, ImportError) as err:
            raise ConfigError(str(err)) from err
        kwargs: dict[str, Any] = {"quantization_config": bnb_config}
        if self.device.type == "cuda" and "device_map" not in self.cfg.model:
            kwargs["device_map"] = {"": self.device}
        target = self.cfg.model.get("_target_")
        hint = "use nemo_like.NeMoAutoModelForCausalLM.from_pretrained"
        try:
            model = self.cfg.model.instantiate(**kwargs)
        except ConfigError as err:
            if "quantization_config" not in str(err):
                raise
            raise ConfigError(f"quantization: model target {target} does not take quantization_config; {hint}") from err
        # Before any forward: a CPU eval pass would otherwise repack 4-bit weights for inference only.
        if prepare_model_for_qlora(model) == 0:
            raise ConfigError(f"quantization: model target {target} ignored quantization_config "
                              f"(no bitsandbytes layers); {hint}")
        return model

    def _shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2: shard each decoder layer, then the root, over all ranks."""
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, "model", model), "layers", [])
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return model

    def _autocast_dtype(self) -> torch.dtype | None:
        name = self.cfg.get("autocast.dtype", None) if self.cfg.get("autocast.enabled", True) else None
        if name is None:
            return None
        dtype = getattr(torch, str(name).replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"autocast.dtype: {name!r} is not a torch dtype (try bfloat16)")
        return dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ the loop
    def run_train_validation_loop(self) -> dict[str, Any]:
        sched = self.step_scheduler
        self._install_signal_handlers()
        if self.generation_eval and self.generation_eval.get("before_training", True):
            self.accuracy_before = self._run_generation_eval("before training")
        progress = ProgressReporter(sched.max_steps, initial=sched.step, enabled=self.dist.is_main,
                                    disable_progress_bar=bool(self.cfg.get("disable_progress_bar", False)))
        last_val: float | None = None
        history: list[dict[str, Any]] = []
        for epoch in sched.epochs:
            sched.set_epoch(epoch)
            for batches in sched:
                metrics = self._run_train_optim_step(batches)
                metrics.update(step=sched.step, epoch=epoch)
                history.append(metrics)
                self.train_log.log(metrics)
                progress.update(metrics)
                if sched.is_val_step and self.val_dataloader is not None:
                    last_val = self._run_validation_epoch()
                    self.val_log.log({"step": sched.step, "epoch": epoch, "val_loss": last_val})
                    progress.write(f"validation | step {sched.step} | val_loss {last_val:.4f}")
                if sched.is_ckpt_step:
                    self._save_checkpoint(epoch, history, last_val)
        progress.close()
        self._restore_signal_handlers()
        if sched.sigterm:
            self._log_how_to_resume()
        result: dict[str, Any] = {"history": history, "val_loss": last_val}
        if self.generation_eval and not sched.sigterm:
            result["accuracy_before"] = getattr(self, "accuracy_before", None)
            result["accuracy_after"] = self._run_generation_eval("after training")
        return result

    def _run_train_optim_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """One optimizer step: loss = sum of token losses over all micro-batches / global label tokens."""
        start = time.perf_counter()
        num_label_tokens = all_reduce_sum(sum((b["labels"] != -100).sum() for b in batches).to(self.device))
        num_tokens = sum(int(b["input_ids"].numel()) for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with self._autocast():
                logits = self.model(**self._model_inputs(batch)).logits
            loss = self.loss_fn(logits, labels, num_label_tokens=num_label_tokens)
            # Data-parallel gradients are averaged over ranks; scaling restores the global mean.
            (loss * self.dist.world_size).backward()
            step_loss += loss.detach()
        grad_norm = self._clip_gradients()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(1)
        elapsed = time.perf_counter() - start
        return {
            "loss": float(all_reduce_sum(step_loss)),
            "grad_norm": grad_norm,
            "lr": lr,
            "mem_gib": peak_memory_gib(),
            "tps": num_tokens * self.dist.world_size / elapsed,
            "num_label_tokens": int(num_label_tokens),
            "time_s": elapsed,
        }

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch fields the model takes; a packed batch's mask is adapted to the attention backend."""
        inputs = {k: v for k, v in batch.items() if k in _MODEL_INPUTS}
        dtype = next(self.model.parameters()).dtype
        return prepare_packed_attention(inputs, attention_implementation(self.model), dtype)

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def _run_validation_epoch(self) -> float:
        """Token-weighted loss over the whole validation set."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in self.val_dataloader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with self._autocast():
                logits = self.model(**self._model_inputs(batch)).logits
            total += self.loss_fn(logits, labels).double()
            count += (labels != -100).sum()
        self.model.train()
        return float(all_reduce_sum(total) / all_reduce_sum(count).clamp(min=1))

    def _run_generation_eval(self, when: str) -> float | None:
        if not self.dist.is_main:
            return None
        from nemo_like.components.eval.exact_match import generation_exact_match, load_jsonl_rows

        ev = self.generation_eval
        rows = load_jsonl_rows(ev["path_or_dataset_id"], limit=ev.get("limit"))
        start = time.perf_counter()
        with self._autocast():
            result = generation_exact_match(
                self.model, self.tokenizer, rows,
                column_mapping=ev.get("column_mapping"),
                use_chat_template=ev.get("use_hf_chat_template", True),
                max_new_tokens=ev.get("max_new_tokens", 16),
                batch_size=ev.get("batch_size", 32),
            )
        logger.info("held-out exact match %s: %.3f (%d rows, %.1f s)", when, result["accuracy"], result["n"],
                    time.perf_counter() - start)
        return result["accuracy"]

    def _save_checkpoint(self, epoch: int, history: list[dict[str, Any]], val_loss: float | None) -> None:
        sched = self.step_scheduler
        self.checkpointer.save(
            epoch, sched.step, self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler, step_scheduler=sched, rng=self.rng, dataloader=self.dataloader,
            config=self.cfg.to_dict(), losses={"train": self.prior_train_losses + [h["loss"] for h in history]},
            val_loss=val_loss, peft_config=self.peft_config, base_model_name_or_path=self.model_id,
        )

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the current step, save, and stop; a second SIGINT interrupts at once."""
        self._previous_handlers: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            logger.warning("%s received: finishing this step and saving a checkpoint",
                           signal.Signals(signum).name)
            self.step_scheduler.sigterm = True
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, self._previous_handlers.get(signal.SIGINT, signal.default_int_handler))

        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # only the main thread may install handlers
                self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in getattr(self, "_previous_handlers", {}).items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)

    def _log_how_to_resume(self) -> None:
        latest = self.checkpointer.latest() if self.checkpointer.config.enabled else None
        if latest is None:
            logger.warning("stopped by a signal after step %d; checkpointing is off, so there is nothing to resume from",
                           self.step_scheduler.step - 1)
            return
        command = shlex.join([os.path.basename(sys.executable), *sys.argv])
        logger.warning("stopped by a signal; the last checkpoint is %s. To resume, run the same command again "
                       "(checkpoint.restore_from defaults to LATEST): %s", latest, command)
