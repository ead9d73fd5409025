"""The run around a training method: everything but the step.

A method recipe builds its parts (model, data, optimizer, loss) and writes
``_run_train_optim_step(batches)`` and ``_run_validation_epoch()``; the base owns the rest of
the run: distributed set-up, logging, the checkpointer and resume, signals, the loop over
epochs and steps with its validation and checkpoint cadence, callbacks and trackers. The held-out
generation eval, lm-eval after training and the loss plot are callbacks it adds from the shared sections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from typing import Any

import torch

from nemo_like.components._peft.lora import adapters_disabled
from nemo_like.components.callbacks.callback import CallbackList, TrainState
from nemo_like.components.checkpoint.checkpointing import Checkpointer, drop_records_after
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.components.distributed.init import initialize_distributed
from nemo_like.components.dtypes import parse_dtype
from nemo_like.components.loggers.jsonl import JSONLLogger
from nemo_like.components.loggers.phase_progress import with_progress
from nemo_like.components.training.grad_buffer import ContiguousGrads
from nemo_like.components.training.nan_policy import should_skip_update
from nemo_like.components.training.rng import StatefulRNG
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.config.secrets import redact_config
from nemo_like.recipes.builders.callbacks import build_callbacks, build_run_callbacks
from nemo_like.recipes.builders.data import build_dataloader, build_dataset
from nemo_like.recipes.builders.model import build_model, model_context_length
from nemo_like.recipes.builders.evaluation import evaluation_section
from nemo_like.recipes.builders.trackers import build_metric_loggers

logger = logging.getLogger("nemo_like")


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


class BaseRecipe:
    """Set-up of the run and the training loop; subclasses supply the parts and the step.

    A subclass's ``setup`` calls ``setup_run()`` first (processes, logging, checkpointer, RNG) and
    ``setup_observers()`` last (metric files, callbacks, trackers, resume), after it has set
    ``model``, ``optimizer``, ``step_scheduler`` (over the training loader) and, when it has them,
    ``lr_scheduler``, ``val_dataloader``, ``tokenizer``, ``peft_config`` and ``model_id``.
    ``checkpoint_state()`` names what a checkpoint holds; a method with more state extends it.
    """

    def __init__(self, cfg: ConfigNode, sections: Any) -> None:
        self.cfg = cfg
        self.sections = sections  # the recipe's typed sections, checked before anything loaded
        self.stopped_by_signal: int | None = None
        self.tokenizer: Any = None
        self.peft_config: Any = None
        self.model_id: str | None = None
        self.lr_scheduler: Any = None
        self.val_dataloader: Any = None
        self.defer_grad_sync = False  # FSDP2 with distributed_config.defer_fsdp_grad_sync (set with the model)
        self._previous_handlers: dict[int, Any] = {}  # signal handlers to put back after the loop

    # ------------------------------------------------------------------ set-up
    def setup_run(self) -> None:
        """Processes and devices, logging, the checkpoint to resume (found and checked before data or model load), RNG."""
        sections = self.sections
        self.dist = initialize_distributed(sections.dist_env.backend, sections.dist_env.timeout_minutes,
                                           distributed=sections.distributed)
        setup_logging(self.dist.is_main)
        self.device = self.dist.device
        self.checkpointer = Checkpointer(sections.checkpoint, is_main=self.dist.is_main)
        self.resume_from = self.checkpointer.resume_path()
        self.rng = self._build_rng()
        self.autocast_dtype = self._autocast_dtype()

    def _build_rng(self) -> Any:
        """The ``rng`` section, else ``StatefulRNG(seed, ranked=True)`` with the top-level ``seed`` (default 42).

        A top-level ``seed`` and an ``rng`` section that names another seed contradict each other.
        """
        seed = getattr(self.sections, "seed", None)
        if "rng" not in self.cfg:
            return StatefulRNG(seed=42 if seed is None else seed, ranked=True)
        written = self.cfg.get("rng.seed", None)
        if seed is not None and written is not None and written != seed:
            raise ConfigError(f"seed: {seed} contradicts rng.seed {written}; give one")
        return self.cfg.rng.instantiate(**({"seed": seed} if seed is not None and written is None else {}))

    def setup_observers(self) -> None:
        """Metric files, ``callbacks:``, ``evaluation:``, trackers, the run's own callbacks; then the resume."""
        root = self.checkpointer.root
        self.train_log = JSONLLogger(os.path.join(root, "training.jsonl"), enabled=self.dist.is_main)
        self.val_log = JSONLLogger(os.path.join(root, "validation.jsonl"), enabled=self.dist.is_main)
        listed = build_callbacks(self.cfg.get("callbacks", None), self.sections.disable_progress_bar)
        evaluation = evaluation_section(self.cfg)  # a typo or a missing lm-eval fails now, not after training
        self.metric_loggers = build_metric_loggers(self.cfg, root, enabled=self.dist.is_main)  # W&B, MLflow, TB
        self.metric_loggers.log_params(redact_config(self.cfg))
        # Held-out generation eval, lm-eval and the loss plot come with the shared sections, for every method.
        ours = build_run_callbacks(getattr(self.sections, "generation_eval", None), evaluation, self.model,
                                   self.tokenizer, self.dist, self._autocast, self.metric_loggers)
        self.callbacks = CallbackList([*ours, *listed])
        self.prior_train_losses = self._restore_checkpoint()

    # ------------------------------------------------------------------ what a method supplies
    def _run_train_optim_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """One optimizer step over ``batches`` (one per micro-batch); returns its metrics (``loss`` at least)."""
        raise NotImplementedError

    def _run_validation_epoch(self) -> float | dict[str, float]:
        """The validation loss over ``val_dataloader``, or a dict of scores with it as ``val_loss``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers of a method's step
    def _contiguous_grads(self, trainable: list[torch.nn.Parameter]) -> ContiguousGrads | None:
        """``contiguous_grads: true``: gradients in one buffer made now (see ``grad_buffer.py``); one process only."""
        if not self.sections.contiguous_grads:
            return None
        if self.dist.world_size > 1:
            logger.info("contiguous_grads: ignored with %d ranks (DDP/FSDP2 keep their own gradient storage)",
                        self.dist.world_size)
            return None
        return ContiguousGrads(trainable)

    def _zero_grads(self) -> None:
        """Before a step's first backward: the contiguous buffer zeroed, else the gradients dropped."""
        if getattr(self, "grad_buffer", None) is not None:
            self.grad_buffer.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _apply_update(self, loss_value: float, grad_norm: float) -> None:
        """The optimizer step (or, under ``nan_policy: skip``, none when the loss or norm is not finite; ``error``
        raises there), then the learning-rate schedule's step."""
        if should_skip_update(self.step_scheduler.step, loss_value, grad_norm, self.sections.nan_policy):
            self.skipped_steps += 1
            logger.warning("step %d: non-finite loss %s / grad norm %s; update skipped (%d so far, nan_policy: skip)",
                           self.step_scheduler.step, loss_value, grad_norm, self.skipped_steps)
        else:
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(1)

    def _set_gradient_sync(self, last_micro_batch: bool) -> None:
        """With ``defer_fsdp_grad_sync``, FSDP2 keeps the micro-batches' gradients unsharded and
        reduce-scatters them once, after the last one: one collective per step instead of one per
        micro-batch, for the memory of the unsharded gradients of every trainable parameter."""
        if self.defer_grad_sync and hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(last_micro_batch)

    def _setup_data(self, wrap: Any = None) -> None:
        """``dataset`` and ``validation_dataset`` built with the tokenizer (rows held to the model's context),
        each passed through ``wrap`` when given, their loaders (the method's ``_loader(name, dataset,
        batch_size, train)``) and the step scheduler over the training loader."""
        context = model_context_length(self.model_id)
        built = [build_dataset(self.cfg[name], self.tokenizer, max_length=context) if name in self.cfg else None
                 for name in ("dataset", "validation_dataset")]
        self.dataset, self.val_dataset = (d if d is None or wrap is None else wrap(d) for d in built)
        sched = vars(self.sections.step_scheduler)
        self.dataloader = self._loader("dataloader", self.dataset, sched["local_batch_size"], train=True)
        self.val_dataloader = (self._loader("validation_dataloader", self.val_dataset, sched["local_batch_size"],
                                            train=False) if self.val_dataset is not None else None)
        self.step_scheduler = StepScheduler(**sched, dp_size=self.dist.dp_size, dataloader=self.dataloader)

    def _setup_policy(self, frozen_copy: bool) -> None:
        """The model (LoRA, placement, sharding as its sections say) and, with ``frozen_copy``, a frozen second one
        through the same builder as ``self.reference`` (else None)."""
        built = build_model(self.cfg, self.dist, self.device, self.sections.distributed)
        self.model, self.peft_config, self.defer_grad_sync = built.model, built.peft_config, built.defer_grad_sync
        self.reference = (build_model(self.cfg, self.dist, self.device, self.sections.distributed, frozen=True).model
                          if frozen_copy else None)

    def _method_loader(self, name: str, dataset: Any, batch_size: int, train: bool, collate_fn: str) -> Any:
        """The ``name`` dataloader section over ``dataset`` (a plain StatefulDataLoader when absent), with the method's
        own ``collate_fn`` (an import path) unless the section names one."""
        section = self.cfg.get(name)
        if section is None or section.get("collate_fn", None) is None:
            section = ConfigNode({**(section.to_dict() if section is not None else
                                     {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"}),
                                  "collate_fn": {"_target_": collate_fn}}, path=name)
        return build_dataloader(section, dataset, batch_size, train=train, tokenizer=self.tokenizer, dist=self.dist,
                                seed=self.rng.seed, ranked=bool(getattr(self.rng, "ranked", False)), name=name)

    def _reference_context(self) -> contextlib.AbstractContextManager:
        """A method with a reference policy and no copy of it (``self.reference`` None) uses the policy with its
        LoRA adapters switched off."""
        if getattr(self, "reference", None) is None and self.peft_config:
            return adapters_disabled(self.model)
        return contextlib.nullcontext()

    def _run_with_held_out(self, score: str, name: str) -> dict[str, Any]:
        """``run_train_validation_loop`` with the held-out ``score`` (a key of ``_run_validation_epoch``'s dict)
        reported before training (fresh runs) and after it, returned as ``{name}_before`` / ``{name}_after``.
        The method keeps its last scores in ``val_scores`` (taken after step ``val_scores_step``) and says
        them with ``_log_held_out``; the last step's own validation is not run twice."""
        held_out = self.val_dataloader is not None
        before = self._report_held_out("before training") if held_out and self.resume_from is None else None
        self.val_scores_step = -1
        result = BaseRecipe.run_train_validation_loop(self)
        if held_out and not self.step_scheduler.sigterm:
            done = self.step_scheduler.step - 1
            if self.val_scores_step == done:  # the last step validated: its scores are the final ones
                self._log_held_out("after training", self.val_scores)
            after = self.val_scores if self.val_scores_step == done else self._report_held_out("after training")
            result.update({f"{name}_before": before and before[score], f"{name}_after": after[score]})
        return result

    def _validation_batches(self) -> Iterator[Any]:
        """``val_dataloader``'s batches, with count and time-left lines when a validation runs long."""
        return with_progress(self.val_dataloader, "validation", "batches")

    def _report_held_out(self, when: str) -> dict[str, float]:
        scores = self._run_validation_epoch()
        self._log_held_out(when, scores)
        return scores

    def _log_held_out(self, when: str, scores: dict[str, float]) -> None:
        """One line of held-out scores (a method that reports them says which)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop, resume and saves
    def checkpoint_state(self) -> dict[str, Any]:
        """The stateful parts a checkpoint holds, by name; a method adds its own (a DPO reference, a generator)."""
        model = ModelState(self.model, tokenizer=self.tokenizer, adapter=self.peft_config,
                           base_model_name_or_path=self.model_id)
        return {"model": model, "optim": self.optimizer, "lr_scheduler": self.lr_scheduler,
                "step_scheduler": self.step_scheduler, "rng": self.rng,
                "dataloader": self.step_scheduler.dataloader}  # the view that resumes at the next step

    def _restore_checkpoint(self) -> list[float]:
        """Continue from ``checkpoint.restore_from`` (default: LATEST when there is one); returns the losses so far.

        Weights (or the adapter), optimizer, LR and step schedules, the data position and
        the RNG come back as they were after the checkpoint's step, so the loss curve goes
        on exactly; the metric files lose records of steps that will now be re-run.
        """
        path = self.resume_from
        if path is None:  # a fresh start: records of an earlier attempt killed before its first checkpoint go
            if self.dist.is_main:
                for log in (self.train_log, self.val_log):
                    drop_records_after(log.path, -1)
            return []
        losses = self.checkpointer.load(path, self.checkpoint_state())
        done = self.step_scheduler.step - 1
        if self.dist.is_main:
            for log in (self.train_log, self.val_log):
                drop_records_after(log.path, done)
        return list(losses.get("train", []))[: done + 1]

    def _autocast_dtype(self) -> torch.dtype | None:
        autocast = self.sections.autocast
        return parse_dtype(autocast.dtype, "autocast.dtype") if autocast.enabled else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ the loop

    def run_train_validation_loop(self) -> dict[str, Any]:
        sched = self.step_scheduler
        self._install_signal_handlers()
        state = self._start_callbacks()  # the progress bar and the score before training are among them
        last_val: float | None = None
        history: list[dict[str, Any]] = []
        try:
            for epoch in sched.epochs:
                sched.set_epoch(epoch)
                for batches in sched:
                    metrics = self._run_train_optim_step(batches)
                    metrics.update(step=sched.step, epoch=epoch)
                    history.append(metrics)
                    self.train_log.log(metrics)
                    if sched.is_remote_log_step:
                        self.metric_loggers.log_train(metrics)
                    self.callbacks.on_train_step_end(state, metrics)
                    if sched.is_val_step and self.val_dataloader is not None:
                        scores = self._run_validation_epoch()
                        scores = scores if isinstance(scores, dict) else {"val_loss": scores}
                        last_val = scores.get("val_loss")  # a method may score without a loss (GRPO)
                        record = {"step": sched.step, "epoch": epoch, **scores}
                        self.val_log.log(record)
                        self.metric_loggers.log_validation(record)
                        self.callbacks.on_validation_end(state, record)  # early stopping decides here
                    if sched.is_ckpt_step or state.should_stop:  # an early stop leaves a checkpoint too
                        self._save_checkpoint(epoch, history, last_val)
                    if sched.is_gc_step:
                        gc.collect()
                    if state.should_stop:
                        break
                if state.should_stop:
                    break
        except BaseException:
            self.metric_loggers.finish("failed")
            raise
        finally:
            self.callbacks.on_train_end(state)
            self._restore_signal_handlers()
        if sched.sigterm:
            self._log_how_to_resume()
        else:
            self._complete_run(state)
        self.metric_loggers.finish("killed" if sched.sigterm else "success")
        return {"history": history, "val_loss": last_val, "stop_reason": state.stop_reason,
                "stopped_by_signal": self.stopped_by_signal, **state.results}  # accuracy_after, evaluation, ...

    # ------------------------------------------------------------------ observing the run

    def _start_callbacks(self) -> TrainState:
        """The state callbacks see, with the records of a resumed run, then ``on_train_start``."""
        sched = self.step_scheduler
        state = TrainState(max_steps=sched.max_steps, run_dir=self.checkpointer.root, is_main=self.dist.is_main,
                           step=sched.step, epoch=sched.epoch, train_history=self.train_log.read(),
                           val_history=self.val_log.read())
        self.callbacks.on_train_start(state)
        return state

    def _complete_run(self, state: TrainState) -> None:
        """A finished run's evaluations and reports: held-out exact match, lm-eval, the loss plot (callbacks)."""
        try:
            state.latest_checkpoint = self.checkpointer.latest() if self.checkpointer.config.enabled else None
            self.callbacks.on_training_complete(state)
        except BaseException:
            self.metric_loggers.finish("failed")
            raise

    def _save_checkpoint(self, epoch: int, history: list[dict[str, Any]], val_loss: float | None) -> None:
        sched = self.step_scheduler
        config = self.checkpointer.config
        if config.save_consolidated == "final":  # the Hugging Face copy in the last step's checkpoint only
            self.checkpointer.config = dataclasses.replace(config, save_consolidated=sched.is_last_step)
        if sched.sigterm and self.checkpointer.config.save_consolidated:
            # On the way out of a preempted run, only what resuming needs: schedulers kill after ~30 s,
            # and the Hugging Face copy (model/consolidated/) comes with the resumed run's next save.
            self.checkpointer.config = dataclasses.replace(config, save_consolidated=False)
        try:
            self.checkpointer.save(
                epoch, sched.step, self.checkpoint_state(), config=redact_config(self.cfg),
                losses={"train": self.prior_train_losses + [h["loss"] for h in history]}, val_loss=val_loss,
            )
        finally:
            self.checkpointer.config = config

    def _install_signal_handlers(self) -> None:
        """The preemption signal(s) (``step_scheduler.preemption_signal``, SIGTERM by default) and SIGINT finish
        the current step, save, and stop; a second SIGINT interrupts at once."""
        self._previous_handlers = {}

        def handler(signum: int, frame: Any) -> None:
            logger.warning("%s received: finishing this step and saving a checkpoint",
                           signal.Signals(signum).name)
            self.stopped_by_signal = self.stopped_by_signal or signum
            self.step_scheduler.sigterm = True
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, self._previous_handlers.get(signal.SIGINT, signal.default_int_handler))

        preemption = getattr(self.step_scheduler, "preemption_signals", [signal.SIGTERM])
        for signum in dict.fromkeys([*preemption, signal.SIGINT]):
            with contextlib.suppress(ValueError):  # only the main thread may install handlers
                self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
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
                       "(checkpoint.restore_from defaults to LATEST): %s (exit code %d)", latest, command,
                       128 + (self.stopped_by_signal or signal.SIGTERM))
