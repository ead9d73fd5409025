"""Group Relative Policy Optimization on the recipe base: sample a group of completions per prompt, score
them with reward functions, and raise the log-probability of those that beat their group's mean.

A step: the rank's prompts are generated for in one batched rollout (each prompt encoded once per
group, see ``components/rollout``), every reward scores every completion, the weighted sum is turned
into advantages within each group (``group_advantages``), and ``num_iterations`` optimizer updates
follow, each over the step's micro-batches. The loss (``PolicyGradientLoss``) is normalised by the
whole step's sequence or token counts, all ranks together, so it does not change with the split into
micro-batches and ranks. The KL reference exists only when ``grpo.beta > 0``: the policy with its
adapters off (LoRA) or a frozen copy. Metrics carry TRL's names.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from nemo_like.components._peft.lora import adapters_merged
from nemo_like.components.datasets.llm.packed_sequence import attention_implementation, prepare_packed_attention
from nemo_like.components.datasets.llm.preference_collater import SHARED_PROMPT_ATTENTION
from nemo_like.components.distributed.grad_clip import clip_grad_norm
from nemo_like.components.distributed.init import all_reduce_sum, data_parallel_group
from nemo_like.components.loggers.progress import peak_memory_gib
from nemo_like.components.loss.grpo import PolicyGradientLoss, group_advantages
from nemo_like.components.loss.linear_logps import output_layer_scores
from nemo_like.components.loss.sequence_logps import completion_positions
from nemo_like.components.rollout import HFGenerator, Rollout, SamplingParams
from nemo_like.components.rollout.group_rows import group_rows
from nemo_like.components.training.cpu_heap import trim_cpu_heap
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.recipes.builders.rewards import build_rewards
from nemo_like.recipes.base import BaseRecipe
from nemo_like.recipes.builders.model import build_tokenizer
from nemo_like.recipes.builders.optimizer import build_lr_schedule, build_optimizer
from nemo_like.recipes.llm.grpo_config import check_grpo_config, kl_reference_mode

logger = logging.getLogger("nemo_like")

class TrainGRPORecipe(BaseRecipe):
    """Builds the policy, the generator, the rewards and the loss, then trains with ``run_train_validation_loop``."""

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg, check_grpo_config(cfg))
        self.val_scores: dict[str, float] = {}
        self.val_scores_step = -1

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg, sections = self.cfg, self.sections
        grpo = sections.grpo
        self.setup_run()
        self.model_id = cfg.get("model.pretrained_model_name_or_path")
        self.tokenizer = build_tokenizer(cfg, self.model_id)
        self._setup_data()
        self.mode = kl_reference_mode(sections, "peft" in cfg)
        self._setup_policy(frozen_copy=self.mode == "frozen_copy")
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device)
        self.grad_buffer = self._contiguous_grads([p for g in self.optimizer.param_groups for p in g["params"]])
        self.trim_cpu_heap = sections.trim_cpu_heap and self.device.type == "cpu"
        self.skipped_steps = 0
        self.lr_scheduler = build_lr_schedule(sections.lr_scheduler, self.optimizer,
                                              self.step_scheduler.max_steps * grpo.num_iterations)
        self.rewards = build_rewards(cfg.rewards)
        self.loss_fn = PolicyGradientLoss(loss_type=grpo.loss_type, epsilon=grpo.epsilon,
                                          epsilon_high=grpo.epsilon_high, beta=grpo.beta, delta=grpo.delta,
                                          importance_sampling_level=grpo.importance_sampling_level,
                                          max_completion_length=grpo.max_completion_length)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        self.pad_token_id = pad
        everywhere = None
        if self.dist.world_size > 1:  # a sharded forward is a collective: every rank decodes as many steps
            everywhere = lambda left: int(all_reduce_sum(torch.tensor(float(left), device=self.device)))  # noqa: E731
        self.generator = HFGenerator(self.model, eos_token_id=eos, pad_token_id=pad, rows_left_everywhere=everywhere,
                                     sampling_context=lambda: adapters_merged(self.model))
        self.sampling = SamplingParams(temperature=grpo.temperature, top_p=grpo.top_p, top_k=grpo.top_k or None,
                                       max_completion_length=grpo.max_completion_length, sampler=grpo.sampler)
        self.greedy = SamplingParams(temperature=1.0, max_completion_length=grpo.max_completion_length,
                                     do_sample=False)
        self.max_grad_norm = sections.clip_grad_norm.max_norm
        backend = attention_implementation(self.model)
        self.layout = grpo.layout if grpo.layout != "auto" else (
            "shared_prompt" if backend in SHARED_PROMPT_ATTENTION else "padded")
        if self.layout == "shared_prompt" and backend not in SHARED_PROMPT_ATTENTION:
            raise ConfigError(f"grpo.layout: shared_prompt needs an attention backend that reads a dense mask "
                              f"({', '.join(SHARED_PROMPT_ATTENTION)}), and the model uses {backend}; use padded")
        self.setup_observers()

    def _loader(self, name: str, dataset: Any, batch_size: int, train: bool) -> Any:
        return self._method_loader(name, dataset, batch_size, train,
                                   "nemo_like.components.datasets.llm.prompt_dataset.collate_prompts")

    # ------------------------------------------------------------------ the step
    def _run_train_optim_step(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate and score for every prompt of the step, then ``num_iterations`` updates on those completions."""
        grpo = self.sections.grpo
        start = time.perf_counter()
        prompts = _joined(batches)
        rollout = self.generator.generate(prompts["prompt_ids"], grpo.num_generations, self.sampling)
        scores, table = self._score(prompts, rollout)
        advantages, stats = self._advantages(scores)
        micro, num_sequences, num_tokens = self._micro_batches(batches, prompts, rollout, advantages, stats)
        if grpo.num_iterations > 1:  # the sampling policy's log-probs, for the importance ratios of later updates
            with torch.no_grad():
                for m in micro:
                    m["old_logps"] = self._completion_logps(self.model, m)
        if self.mode != "none":
            with torch.no_grad(), self._reference_context():
                for m in micro:
                    m["ref_logps"] = self._completion_logps(self.reference or self.model, m)
        iterations = [self._update(micro, num_sequences, num_tokens) for _ in range(grpo.num_iterations)]
        elapsed = time.perf_counter() - start
        return {**iterations[-1], **self._rollout_metrics(table, scores, stats["zero_std"], rollout),
                "num_sequences": int(num_sequences), "generation_s": rollout.seconds,
                "update_s": elapsed - rollout.seconds, "generated_tokens_per_s": rollout.generated_tokens /
                max(rollout.seconds, 1e-9), "time_s": elapsed, "mem_gib": peak_memory_gib(),
                **({"skipped_steps": self.skipped_steps} if self.skipped_steps else {}),
                **({"iterations": iterations} if len(iterations) > 1 else {})}

    def _micro_batches(self, batches: list[dict[str, Any]], prompts: dict[str, Any], rollout: Rollout,
                       advantages: torch.Tensor, stats: dict[str, Any]
                       ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """The scheduler's micro-batches as scoring rows (groups with one reward left out under ``drop``), and the
        step's sequence and scored-token counts over all ranks (the loss's normalisers)."""
        grpo = self.sections.grpo
        keep = ~stats["zero_std"].view(-1, grpo.num_generations)[:, 0].cpu() if grpo.zero_std_groups == "drop" \
            else torch.ones(len(prompts["prompt_ids"]), dtype=torch.bool)  # per group
        bounds = [0]
        for b in batches:
            bounds.append(bounds[-1] + len(b["prompt_ids"]))
        micro = [self._micro_batch(prompts, rollout, advantages, keep, range(a, z)) for a, z in zip(bounds, bounds[1:])]
        num_sequences = all_reduce_sum(torch.tensor(float(keep.sum() * grpo.num_generations), device=self.device))
        num_tokens = all_reduce_sum(sum((m["grid_mask"].sum() for m in micro),
                                        torch.zeros((), device=self.device)).float())
        return micro, num_sequences, num_tokens

    def _update(self, micro: list[dict[str, torch.Tensor]], num_sequences: torch.Tensor,
                num_tokens: torch.Tensor) -> dict[str, float]:
        """One optimizer update over the step's micro-batches; the loss, KL and clip fractions of the step."""
        self._zero_grads()
        sums: dict[str, torch.Tensor] = {}
        for index, m in enumerate(micro):
            self._set_gradient_sync(last_micro_batch=index == len(micro) - 1)
            if self.trim_cpu_heap:
                trim_cpu_heap()
            logps = self._completion_logps(self.model, m)
            loss, metrics = self.loss_fn(logps, m.get("old_logps"), m["advantages"], m["grid_mask"],
                                         m.get("ref_logps"), num_sequences=num_sequences, num_tokens=num_tokens)
            (loss * self.dist.dp_size).backward()  # data-parallel gradients are averaged over ranks
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, 0) + value.detach().double()
        grad_norm = float(clip_grad_norm(self.model.parameters(), self.max_grad_norm or float("inf")))
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update uses
        reduced = {k: float(all_reduce_sum(v.reshape(1).to(self.device))) for k, v in sorted(sums.items())}
        self._apply_update(reduced["loss"], grad_norm)
        return {**self.loss_fn.finish(reduced), "grad_norm": grad_norm, "lr": lr}

    def _score(self, prompts: dict[str, Any], rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted sum of the rewards of every completion, and the ``[completions, rewards]`` table (NaN: a
        reward that gave None, left out of that reward's mean as TRL does)."""
        g = self.sections.grpo.num_generations
        completions = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        repeat = lambda values: [v for v in values for _ in range(g)]  # noqa: E731 - a prompt's row per completion
        columns = {k: repeat(v) for k, v in prompts["columns"].items()}
        table = []
        for name, _, reward in self.rewards:
            values = reward(prompts=repeat(prompts["prompts"]), completions=completions,
                            completion_ids=rollout.completion_ids, **columns)
            if len(values) != len(completions):
                raise ValueError(f"reward {name!r} gave {len(values)} values for {len(completions)} completions")
            table.append(torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32))
        table = torch.stack(table, dim=1).to(self.device)  # [completions, rewards]
        weights = torch.tensor([w for _, w, _ in self.rewards], device=self.device)
        return (torch.nan_to_num(table) * weights).sum(dim=1), table

    def _rollout_metrics(self, table: torch.Tensor, scores: torch.Tensor, zero_std: torch.Tensor,
                         rollout: Rollout) -> dict[str, float]:
        """TRL's reward and completion metrics over every rank's completions: means and (unbiased) stds from
        summed moments, the zero-std share of all groups, lengths with their global max and min."""
        g = self.sections.grpo.num_generations
        present = ~torch.isnan(table)
        values = torch.nan_to_num(table).double()
        lengths = torch.tensor([len(c) for c in rollout.completion_ids], dtype=torch.float64)
        step = [float(scores.double().sum()), float((scores.double() ** 2).sum()), float(scores.numel()),
                float(zero_std.view(-1, g)[:, 0].sum()), float(zero_std.numel() // g), float(lengths.sum()),
                float(sum(rollout.truncated))]
        sums = torch.cat([values.sum(0), (values ** 2).sum(0), present.sum(0).double(),
                          torch.tensor(step, dtype=torch.float64, device=values.device)])
        sums = all_reduce_sum(sums.to(self.device)).cpu()
        extremes = _all_reduce_max(torch.tensor([lengths.max(), -lengths.min()], device=self.device)).cpu()
        r = len(self.rewards)

        def mean_std(total: torch.Tensor, squares: torch.Tensor, n: torch.Tensor) -> tuple[float, float]:
            n = float(n)
            mean = float(total) / n if n else float("nan")
            var = (float(squares) - n * mean * mean) / (n - 1) if n > 1 else 0.0
            return mean, max(var, 0.0) ** 0.5

        out = {}
        for i, (name, _, _) in enumerate(self.rewards):
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = mean_std(sums[i], sums[r + i], sums[2 * r + i])
        total, squares, count, zero, groups, length, truncated = sums[3 * r:].tolist()
        out["reward"], out["reward_std"] = mean_std(total, squares, count)
        out.update({"frac_reward_zero_std": zero / groups, "completions/mean_length": length / count,
                    "completions/max_length": float(extremes[0]), "completions/min_length": float(-extremes[1]),
                    "completions/clipped_ratio": truncated / count})
        return out

    def _advantages(self, scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Group advantages; with ``scale_rewards: batch`` over every rank's completions, as TRL gathers them."""
        grpo = self.sections.grpo
        if grpo.scale_rewards == "batch" and self.dist.world_size > 1:
            gathered = [torch.zeros_like(scores) for _ in range(self.dist.dp_size)]
            torch.distributed.all_gather(gathered, scores)
            advantages, stats = group_advantages(torch.cat(gathered), grpo.num_generations, grpo.scale_rewards)
            mine = slice(self.dist.dp_rank * scores.numel(), (self.dist.dp_rank + 1) * scores.numel())
            return advantages[mine], {**stats, "zero_std": stats["zero_std"][mine]}
        advantages, stats = group_advantages(scores, grpo.num_generations, grpo.scale_rewards)
        return advantages, stats

    def _micro_batch(self, prompts: dict[str, Any], rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor,
                     groups: range) -> dict[str, torch.Tensor]:
        """The kept groups of ``groups`` as rows (``group_rows``), with their advantages and the loss's token grid.

        A micro-batch with no group kept keeps its first one with nothing scored: every rank runs as many
        forwards and backwards (collectives under FSDP2), and it adds zero to the loss.
        """
        grpo = self.sections.grpo
        g = grpo.num_generations
        kept = [i for i in groups if keep[i]]
        empty = not kept
        kept = kept or [groups[0]]
        sequences = [i * g + k for i in kept for k in range(g)]
        scored = [not empty and not (grpo.mask_truncated_completions and rollout.truncated[j]) for j in sequences]
        rows = group_rows([prompts["prompt_ids"][i] for i in kept], [rollout.completion_ids[j] for j in sequences],
                          scored, self.layout, self.pad_token_id)
        shape = tuple(int(n) for n in rows.pop("grid_shape"))
        grid_mask = torch.zeros(shape, dtype=torch.long)
        grid_mask[rows["grid_sequence"], rows["grid_token"]] = 1
        rows.update(grid_mask=grid_mask, advantages=advantages[torch.tensor(sequences, device=advantages.device)])
        return {k: v.to(self.device) for k, v in rows.items()}

    def _completion_logps(self, model: torch.nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """[sequences, completion tokens] log-probs of each scored token at the sampling temperature (zero elsewhere).

        The output layer scores only the positions that predict a scored token (``output_layer_scores``);
        the model's full ``[tokens, vocab]`` logits are never made.
        """
        input_ids, mask = rows["input_ids"], rows["completion_mask"]
        inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids") if k in rows}
        inputs = prepare_packed_attention(inputs, attention_implementation(model), next(model.parameters()).dtype)
        if bool(mask.any()):
            where = completion_positions(input_ids, mask, None, rows.get("predicted_from"))
        else:  # nothing to learn from: one token scored, times zero below, so the backward still runs (FSDP2)
            one = torch.zeros_like(mask)
            one[0, 1] = 1
            where = completion_positions(input_ids, one)
        scale = 1.0 / self.sections.grpo.temperature
        head = model.get_output_embeddings()
        with self._autocast():
            if isinstance(head, torch.nn.Linear) and not getattr(model.config, "final_logit_softcapping", None):
                with output_layer_scores(head, where.rows, where.targets, scale=scale):
                    flat = model(**inputs, use_cache=False).logits
            else:
                logits = model(**inputs, use_cache=False).logits
                scores = torch.log_softmax(logits.float().flatten(0, 1)[where.rows] * scale, dim=-1)
                flat = scores.gather(1, where.targets.unsqueeze(1)).squeeze(1)
        grid = torch.zeros(rows["grid_mask"].shape, dtype=torch.float32, device=input_ids.device)
        if not bool(mask.any()):
            return grid + 0 * flat.float().sum()
        return grid.index_put((rows["grid_sequence"], rows["grid_token"]), flat.float())

    # ------------------------------------------------------------------ validation
    def run_train_validation_loop(self) -> dict[str, Any]:
        """The base's loop, with held-out greedy accuracy before (fresh runs) and after training reported."""
        return self._run_with_held_out("val_accuracy", "accuracy")

    def _log_held_out(self, when: str, scores: dict[str, float]) -> None:
        logger.info("held-out prompts %s: greedy accuracy %.3f, mean reward %.3f", when, scores["val_accuracy"],
                    scores["val_reward"])

    @torch.no_grad()
    def _run_validation_epoch(self) -> dict[str, float]:
        """Greedy completions of every held-out prompt, scored by every reward. ``val_accuracy``: the share that
        get the first reward's full score (1.0 or more); ``val_reward``: the mean of the weighted sum."""
        weights = torch.tensor([w for _, w, _ in self.rewards], dtype=torch.float64)
        totals = torch.zeros(3 + len(self.rewards), dtype=torch.float64)  # count, correct, weighted, per reward
        for batch in self._validation_batches():
            rollout = self.generator.generate(batch["prompt_ids"], 1, self.greedy)
            completions = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            table = torch.stack([torch.tensor([0.0 if v is None else float(v) for v in reward(
                prompts=batch["prompts"], completions=completions, completion_ids=rollout.completion_ids,
                **batch["columns"])], dtype=torch.float64) for _, _, reward in self.rewards], dim=1)
            totals += torch.cat([torch.tensor([float(len(completions)), float((table[:, 0] >= 1.0).sum()),
                                               float((table * weights).sum())], dtype=torch.float64),
                                 table.sum(dim=0)])
        totals = all_reduce_sum(totals.to(self.device)).cpu()
        count = float(totals[0].clamp(min=1))
        self.val_scores_step = self.step_scheduler.step
        self.val_scores = {"val_accuracy": float(totals[1]) / count, "val_reward": float(totals[2]) / count,
                           **{f"val_rewards/{name}": float(totals[3 + i]) / count
                              for i, (name, _, _) in enumerate(self.rewards)}}
        return self.val_scores


def _joined(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The step's micro-batches of prompts as one (they are generated for together)."""
    columns = {k: [v for b in batches for v in b["columns"][k]] for k in batches[0]["columns"]}
    return {"prompt_ids": [p for b in batches for p in b["prompt_ids"]],
            "prompts": [p for b in batches for p in b["prompts"]], "columns": columns}


def _all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The elementwise max over data-parallel ranks (identity for one process)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=data_parallel_group())
    return value
