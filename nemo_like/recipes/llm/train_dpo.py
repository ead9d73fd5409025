"""Direct Preference Optimization on the recipe base: raise the policy's log-ratio of chosen over rejected
completions against a reference policy (see ``components/loss/dpo.py`` for the losses).

The reference is the policy with its adapters off (LoRA), a frozen copy (full fine-tunes), log-probs
computed once before training (``precomputed``, kept in checkpoints) or nothing (reference-free
losses); the ``reference:`` section chooses. A step's loss is the mean over every pair of the step,
whatever its split into micro-batches and ranks; the metrics carry TRL's names.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from nemo_like.components.batch import split_batch
from nemo_like.components.datasets.llm.packed_sequence import attention_implementation, prepare_packed_attention
from nemo_like.components.datasets.llm.preference_collater import (
    check_shared_prompt_attention, chosen_token_count, pairs_in_batch,
)
from nemo_like.components.distributed.grad_clip import clip_grad_norm
from nemo_like.components.distributed.init import all_reduce_sum
from nemo_like.components.loggers.progress import peak_memory_gib
from nemo_like.components.loss.dpo import DPOLoss
from nemo_like.components.loss.linear_logps import output_layer_scores
from nemo_like.components.loss.sequence_logps import completion_positions, sequence_logps
from nemo_like.components.training.cpu_heap import trim_cpu_heap
from nemo_like.components.training.precomputed_reference import (
    IndexedPairs, PrecomputedReference, collate_with_pair_index, shard_indices,
)
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.recipes.base import BaseRecipe
from nemo_like.recipes.builders.model import build_tokenizer
from nemo_like.recipes.builders.optimizer import build_lr_schedule, build_optimizer
from nemo_like.recipes.llm.dpo_config import check_dpo_config, reference_mode

logger = logging.getLogger("nemo_like")

# The batch fields the method reads itself; the model takes the rest.
_METHOD_KEYS = ("completion_mask", "sequence_index", "predicted_from", "pair_index")
_REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected")


class TrainDPORecipe(BaseRecipe):
    """Builds the policy, the reference, the pairs and the loss, then trains with ``run_train_validation_loop``."""

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg, check_dpo_config(cfg))
        self.val_scores: dict[str, float] = {}
        self.val_scores_step = -1  # the step after which val_scores were taken

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg, sections = self.cfg, self.sections
        self.setup_run()
        self.model_id = cfg.get("model.pretrained_model_name_or_path")
        self.tokenizer = build_tokenizer(cfg, self.model_id)
        self.mode = reference_mode(sections, "peft" in cfg)
        self._setup_data(wrap=IndexedPairs if self.mode == "precomputed" else None)
        self._setup_policy(frozen_copy=self.mode == "frozen_copy")
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device)
        self.grad_buffer = self._contiguous_grads([p for g in self.optimizer.param_groups for p in g["params"]])
        self.trim_cpu_heap = sections.trim_cpu_heap and self.device.type == "cpu"
        self.skipped_steps = 0  # optimizer steps dropped by nan_policy: skip
        self.lr_scheduler = build_lr_schedule(sections.lr_scheduler, self.optimizer, self.step_scheduler.max_steps)
        self.loss_fn = DPOLoss(**vars(sections.dpo))
        self.forward_options = {"use_cache": False}
        self.max_grad_norm = sections.clip_grad_norm.max_norm
        self.precomputed = {"train": PrecomputedReference(len(self.dataset))} if self.mode == "precomputed" else {}
        if self.mode == "precomputed" and self.val_dataset is not None:
            self.precomputed["validation"] = PrecomputedReference(len(self.val_dataset))
        self.setup_observers()  # a resumed run's precomputed log-probs come back here
        for split, table in self.precomputed.items():
            if not table.complete:
                self._precompute(table, self.dataset if split == "train" else self.val_dataset)

    def _loader(self, name: str, dataset: Any, batch_size: int, train: bool) -> Any:
        loader = self._method_loader(name, dataset, batch_size, train,
                                     "nemo_like.components.datasets.llm.preference_collater.preference_collater")
        if self.mode == "precomputed":
            loader.collate_fn = collate_with_pair_index(loader.collate_fn)
        return loader

    def checkpoint_state(self) -> dict[str, Any]:
        """The base's parts, and the precomputed reference log-probs (a resume must not recompute them)."""
        return {**super().checkpoint_state(), **{f"reference_{k}": v for k, v in self.precomputed.items()}}

    # ------------------------------------------------------------------ the step
    def _run_train_optim_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """One optimizer step: the loss is the mean over all pairs of all micro-batches on all ranks."""
        start = time.perf_counter()
        num_pairs = all_reduce_sum(torch.tensor(float(sum(pairs_in_batch(b) for b in batches)), device=self.device))
        num_chosen_tokens = all_reduce_sum(sum(chosen_token_count(b) for b in batches).float().to(self.device))
        self._zero_grads()
        totals = torch.zeros(len(_REWARDS) + 1, device=self.device, dtype=torch.float64)
        for index, batch in enumerate(batches):
            self._set_gradient_sync(last_micro_batch=index == len(batches) - 1)
            if self.trim_cpu_heap:
                trim_cpu_heap()  # the last backward's freed pages go back to the OS first
            loss, sums = self._pair_loss(batch, num_pairs, num_chosen_tokens)
            (loss * self.dist.dp_size).backward()  # data-parallel gradients are averaged over ranks
            totals += torch.cat([loss.detach().double().reshape(1), sums])
        grad_norm = float(clip_grad_norm(self.model.parameters(), self.max_grad_norm or float("inf")))
        lr = self.optimizer.param_groups[0]["lr"]
        totals = all_reduce_sum(totals)
        self._apply_update(float(totals[0]), grad_norm)
        pairs = float(num_pairs)
        elapsed = time.perf_counter() - start
        return {"loss": float(totals[0]), **{k: float(v) / pairs for k, v in zip(_REWARDS, totals[1:])},
                "grad_norm": grad_norm, "lr": lr, "num_pairs": int(pairs), "pairs_per_s": pairs / elapsed,
                "mem_gib": peak_memory_gib(), "time_s": elapsed,
                **({"skipped_steps": self.skipped_steps} if self.skipped_steps else {})}

    def _pair_loss(self, batch: dict[str, torch.Tensor], num_pairs: torch.Tensor, num_chosen_tokens: torch.Tensor,
                   split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """This micro-batch's share of the loss over ``num_pairs``, and its sums of the reward metrics."""
        (chosen, rejected), (chosen_tokens, rejected_tokens) = self._logps(self.model, batch)
        ref_chosen, ref_rejected = self._reference_logps(batch, split)
        loss, metrics = self.loss_fn(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
                                     chosen_nll=-chosen, num_pairs=num_pairs, num_chosen_tokens=num_chosen_tokens)
        sums = [metrics[k].sum() for k in _REWARDS[:4]] + [chosen.detach().sum(), rejected.detach().sum()]
        return loss, torch.stack(sums).double()

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((chosen, rejected) summed completion log-probs, (chosen, rejected) completion token counts).

        The output layer scores only the positions that predict a completion token (``linear_token_logps``):
        the model's full ``[tokens, vocab]`` logits are never made. Heads that are not a plain linear layer
        (or whose logits are capped) go through the logits and ``sequence_logps``.
        """
        inputs, own = split_batch(batch, None, _METHOD_KEYS)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "predicted_from" in own:  # the shared-prompt layout needs a backend that reads its mask
            try:
                check_shared_prompt_attention(attention_implementation(model))
            except ValueError as err:
                raise ConfigError(f"dataloader.collate_fn: {err}") from None
        inputs = prepare_packed_attention(inputs, attention_implementation(model), next(model.parameters()).dtype)
        own = {k: v.to(self.device) for k, v in own.items()}
        num_sequences = 2 * pairs_in_batch(batch)
        head = model.get_output_embeddings()
        if isinstance(head, torch.nn.Linear) and not getattr(model.config, "final_logit_softcapping", None):
            where = completion_positions(inputs["input_ids"], own["completion_mask"], own.get("sequence_index"),
                                         own.get("predicted_from"))
            with self._autocast(), output_layer_scores(head, where.rows, where.targets):
                token_logps = model(**inputs, **self.forward_options).logits
            logps = token_logps.new_zeros(num_sequences).index_add(0, where.sequence, token_logps)
            counts = torch.bincount(where.sequence, minlength=num_sequences).to(logps.dtype)
            return logps.chunk(2), counts.chunk(2)
        with self._autocast():
            logits = model(**inputs, **self.forward_options).logits
        index = own.get("sequence_index")
        logps, counts = sequence_logps(logits, inputs["input_ids"], own["completion_mask"], index,
                                       None if index is None else num_sequences, own.get("predicted_from"))
        return logps.chunk(2), counts.chunk(2)

    def _reference_logps(self, batch: dict[str, torch.Tensor], split: str
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.mode == "none":
            return None, None
        if self.mode == "precomputed":
            return self.precomputed[split].lookup(batch["pair_index"], torch.float32, self.device)
        with torch.no_grad(), self._reference_context():
            (chosen, rejected), _ = self._logps(self.reference or self.model, batch)
        return chosen, rejected

    @torch.no_grad()
    def _precompute(self, table: PrecomputedReference, dataset: IndexedPairs) -> None:
        """One pass over ``dataset`` with the reference (adapters off, or the policy before any step)."""
        start = time.perf_counter()
        size = self.sections.reference.batch_size or self.sections.step_scheduler.local_batch_size
        collate = self.dataloader.collate_fn

        def batches():
            for indices in shard_indices(len(dataset), self.dist.dp_rank, self.dist.dp_size, size):
                batch = collate([dataset[i] for i in indices])
                with self._reference_context():
                    (chosen, rejected), _ = self._logps(self.model, batch)
                yield batch["pair_index"], chosen, rejected

        table.fill(batches(), all_reduce_sum)
        logger.info("reference log-probs of %d pairs precomputed in %.1f s", len(dataset), time.perf_counter() - start)

    # ------------------------------------------------------------------ validation
    def run_train_validation_loop(self) -> dict[str, Any]:
        """The base's loop, with the held-out reward accuracy before (fresh runs) and after training reported."""
        return self._run_with_held_out("val_rewards/accuracies", "reward_accuracy")

    def _log_held_out(self, when: str, scores: dict[str, float]) -> None:
        logger.info("held-out pairs %s: reward accuracy %.3f, reward margin %.3f, loss %.4f", when,
                    scores["val_rewards/accuracies"], scores["val_rewards/margins"], scores["val_loss"])

    @torch.no_grad()
    def _run_validation_epoch(self) -> dict[str, float]:
        """The loss and reward metrics over every held-out pair (pair-weighted), with TRL's names."""
        self.model.eval()
        totals = torch.zeros(len(_REWARDS) + 1, device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in self._validation_batches():
            pairs = torch.tensor(float(pairs_in_batch(batch)), device=self.device)
            chosen_tokens = chosen_token_count(batch).float().to(self.device)
            loss, sums = self._pair_loss(batch, pairs, chosen_tokens, split="validation")
            totals += torch.cat([loss.double().reshape(1) * pairs, sums])  # the batch's mean back to a sum
            count += pairs
        self.model.train()
        totals, count = all_reduce_sum(totals), float(all_reduce_sum(count).clamp(min=1))
        self.val_scores_step = self.step_scheduler.step
        self.val_scores = {"val_loss": float(totals[0]) / count,
                           **{f"val_{k}": float(v) / count for k, v in zip(_REWARDS, totals[1:])}}
        return self.val_scores
