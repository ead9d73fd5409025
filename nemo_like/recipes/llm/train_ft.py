"""Supervised fine-tuning for next-token prediction: its parts and its step, on the recipe base."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from typing import Any

import torch

from nemo_like.components.batch import ignore_index_of, model_batch_keys, split_batch
from nemo_like.components.datasets.llm.packed_sequence import attention_implementation, prepare_packed_attention
from nemo_like.components.distributed.context_parallel import shard_batch
from nemo_like.components.distributed.grad_clip import clip_grad_norm
from nemo_like.components.distributed.init import all_reduce_sum
from nemo_like.components.loggers.progress import peak_memory_gib
from nemo_like.components.loss.linear_ce import FusedLinearCrossEntropy
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.training.cpu_heap import trim_cpu_heap
from nemo_like.components.training.step_scheduler import StepScheduler
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.recipes.base import BaseRecipe
from nemo_like.recipes.builders.data import build_dataloader, build_dataset
from nemo_like.recipes.builders.model import build_model, build_tokenizer, model_context_length
from nemo_like.recipes.builders.optimizer import build_lr_schedule, build_optimizer
from nemo_like.recipes.builders.training_features import build_training_features
from nemo_like.recipes.llm.sft_config import check_sft_config

logger = logging.getLogger("nemo_like")

_METHOD_KEYS = ("labels", "loss_mask")  # the batch fields this method reads itself; the model takes the rest


class TrainFinetuneRecipeForNextTokenPrediction(BaseRecipe):
    """Builds every part named in the config, then trains with ``run_train_validation_loop``."""

    def __init__(self, cfg: ConfigNode, sections: Any = None) -> None:
        # Every section typed and checked before anything loads (a recipe built on this one passes its own).
        super().__init__(cfg, sections if sections is not None else check_sft_config(cfg))
        self._sequence_parallel = False
        self.skipped_steps = 0  # optimizer steps dropped by nan_policy: skip

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg, sections = self.cfg, self.sections
        self.setup_run()

        self.model_id = cfg.get("model.pretrained_model_name_or_path")
        self.tokenizer = build_tokenizer(cfg, self.model_id)
        # Data before the model: a bad row stops the run in seconds, before anything is written.
        context = model_context_length(self.model_id)  # a row longer than the model takes is refused (or cut) now
        packing = cfg.get("packed_sequence")
        self.dataset = build_dataset(cfg.dataset, self.tokenizer, max_length=context, packing=packing)
        has_val = "validation_dataset" in cfg
        self.val_dataset = (build_dataset(cfg.validation_dataset, self.tokenizer, max_length=context, packing=packing)
                            if has_val else None)
        sched = vars(sections.step_scheduler)
        loader_args = {"tokenizer": self.tokenizer, "dist": self.dist, "seed": self.rng.seed,
                       "ranked": bool(getattr(self.rng, "ranked", False))}
        self.dataloader = build_dataloader(cfg.get("dataloader"), self.dataset, sched["local_batch_size"], train=True,
                                           name="dataloader", **loader_args)
        self.val_dataloader = (
            build_dataloader(cfg.get("validation_dataloader"), self.val_dataset, sched["local_batch_size"],
                             train=False, name="validation_dataloader", **loader_args)
            if self.val_dataset is not None
            else None
        )
        self.step_scheduler = StepScheduler(**sched, dp_size=self.dist.dp_size, dataloader=self.dataloader)

        self._setup_model_and_step()
        self.setup_observers()

    def _setup_model_and_step(self, prepare: Any = None) -> None:
        """The model (``prepare``: a method's own step before adapters, see ``build_model``) and what the step
        uses: training features, optimizer, LR schedule, loss, the batch keys the model takes."""
        cfg, sections = self.cfg, self.sections
        built = build_model(cfg, self.dist, self.device, sections.distributed, prepare=prepare)
        self.model, self.peft_config = built.model, built.peft_config
        self.defer_grad_sync, self._sequence_parallel = built.defer_grad_sync, built.sequence_parallel
        # NEFTune (noisy input embeddings while training) and QAT (fake-quantized linears), before the optimizer.
        self.features = build_training_features(cfg, sections, self.model, self.dist.world_size)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device)
        self.grad_buffer = self._contiguous_grads([p for g in self.optimizer.param_groups for p in g["params"]])
        self.trim_cpu_heap = sections.trim_cpu_heap and self.device.type == "cpu"
        self.lr_scheduler = build_lr_schedule(sections.lr_scheduler, self.optimizer, self.step_scheduler.max_steps)
        self.loss_fn = cfg.loss_fn.instantiate() if "loss_fn" in cfg else MaskedCrossEntropy()
        self.ignore_index = ignore_index_of(self.loss_fn)
        self.model_keys = model_batch_keys(self.model)  # a batch field nobody reads is an error, not dropped
        # use_cache=False when the model takes it: training never reads the key/value cache, and a block that
        # recomputes its activations (activation checkpointing) would append to it twice.
        takes_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        self.forward_options = {"use_cache": False} if takes_cache else {}
        self.max_grad_norm = sections.clip_grad_norm.max_norm

    def _run_train_optim_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """One optimizer step: loss = sum of token losses over all micro-batches / global label tokens."""
        start = time.perf_counter()
        self.features.before_step(self.step_scheduler.step)  # QAT: fake quantization on from its step
        batches = [self._inputs_and_labels(b) for b in batches]
        num_label_tokens = all_reduce_sum(sum((lb != self.ignore_index).sum() for _, lb in batches).to(self.device))
        num_tokens = sum(int(inputs["input_ids"].numel()) for inputs, _ in batches)
        self._zero_grads()
        step_loss = torch.zeros((), device=self.device)
        for index, (inputs, labels) in enumerate(batches):
            self._set_gradient_sync(last_micro_batch=index == len(batches) - 1)
            if self.trim_cpu_heap:
                trim_cpu_heap()  # the last backward's freed pages go back to the OS first
            loss = self._forward_loss(self._model_inputs(inputs), labels, num_label_tokens=num_label_tokens)
            # Data-parallel gradients are averaged over ranks; scaling restores the global mean.
            (loss * self.dist.dp_cp_size).backward()
            step_loss += loss.detach()
        grad_norm = self._clip_gradients()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_value = float(all_reduce_sum(step_loss))
        self._apply_update(loss_value, grad_norm)
        elapsed = time.perf_counter() - start
        return {
            "loss": loss_value,
            "grad_norm": grad_norm,
            "lr": lr,
            "mem_gib": peak_memory_gib(),
            "tps": num_tokens * self.dist.dp_cp_size / elapsed,
            "num_label_tokens": int(num_label_tokens),
            "time_s": elapsed,
            **({"skipped_steps": self.skipped_steps} if self.skipped_steps else {}),
        }

    def _inputs_and_labels(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This rank's share of the batch as (model inputs, labels with ``loss_mask`` folded in); the labels
        stay on the host: picking the labelled positions there needs no device sync."""
        inputs, own = split_batch(self._split_sequence(batch), self.model_keys, _METHOD_KEYS, type(self.model).__name__)
        labels = own["labels"]
        if "loss_mask" in own:
            labels = labels.masked_fill(own["loss_mask"] == 0, self.ignore_index)
        return inputs, labels

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inputs on the device; a packed batch's mask is adapted to the attention backend."""
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        dtype = next(self.model.parameters()).dtype
        return prepare_packed_attention(inputs, attention_implementation(self.model), dtype)

    def _forward_loss(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, num_label_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward one micro-batch; its summed token loss, divided by ``num_label_tokens`` when given.

        A fused linear cross-entropy takes the output layer's place for this forward, so the
        model's full ``[tokens, vocab]`` logits never exist (see ``_fused_output_layer``).
        """
        scale = {} if num_label_tokens is None else {"num_label_tokens": num_label_tokens}
        with self._autocast():
            if isinstance(self.loss_fn, FusedLinearCrossEntropy):
                with self._fused_output_layer(labels, scale):
                    return self.model(**inputs, **self.forward_options).logits
            logits = self.model(**inputs, **self.forward_options).logits
        return self.loss_fn(logits, labels, **scale)

    @contextlib.contextmanager
    def _fused_output_layer(self, labels: torch.Tensor, scale: dict[str, Any]) -> Any:
        """For one forward, the output layer returns the fused loss of its input instead of logits.

        The loss is computed inside the model's own forward, where the output layer's weight is
        what the forward uses (gathered by FSDP2, and its gradient reduced by FSDP2 as for
        logits), and the model hands it back as ``logits``: a 0-d tensor, nothing of vocabulary size.
        """
        head = self.model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise ConfigError(f"loss_fn: FusedLinearCrossEntropy needs a plain linear output layer; this model's is "
                              f"{type(head).__name__} (an adapter on lm_head?); use MaskedCrossEntropy")
        if getattr(self.model.config, "final_logit_softcapping", None):
            raise ConfigError("loss_fn: this model caps its logits after the output layer "
                              "(final_logit_softcapping); use MaskedCrossEntropy")

        def project_and_score(hidden: torch.Tensor) -> torch.Tensor:
            weight, bias = head.weight, head.bias
            if hasattr(weight, "full_tensor"):  # tensor parallel: a DTensor shard, gathered differentiably
                weight = weight.full_tensor()
                bias = bias.full_tensor() if bias is not None else None
            return self.loss_fn(hidden, labels, weight, lm_bias=bias, **scale)

        head.forward = project_and_score
        try:
            yield
        finally:
            del head.forward  # back to the class's forward

    def _clip_gradients(self) -> float:
        """Clip to ``clip_grad_norm.max_norm`` (only measure when unset); works on sharded (DTensor) gradients."""
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        return float(clip_grad_norm(self.model.parameters(), max_norm))

    @torch.no_grad()
    def _run_validation_epoch(self) -> float:
        """Token-weighted loss over the whole validation set."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in self._validation_batches():
            inputs, labels = self._inputs_and_labels(batch)
            total += self._forward_loss(self._model_inputs(inputs), labels).double()
            count += (labels != self.ignore_index).sum().to(self.device)
        self.model.train()
        return float(all_reduce_sum(total) / all_reduce_sum(count).clamp(min=1))

    def _split_sequence(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's share of the sequence under context parallel, padded to split evenly over
        tensor-parallel ranks under sequence parallel; the batch itself otherwise."""
        multiple = self.dist.tp_size if self._sequence_parallel else 1
        if self.dist.cp_size == 1 and multiple == 1:
            return batch
        return shard_batch(batch, self.dist.cp_size, self.dist.cp_rank, multiple=multiple)
