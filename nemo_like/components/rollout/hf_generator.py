"""Group sampling for GRPO with a plain decoding loop over a ``transformers`` causal LM.

Why not ``model.generate(num_return_sequences=G)``: it copies every prompt G times before the
prefill, so each prompt is encoded G times, and it hands back padded rows without the
log-probabilities the trainer needs. Here the P prompts are encoded once, the KV cache rows and
last logits are repeated G times, and rows that stop leave the batch. The sampling itself is
``generate``'s, step for step: the same warpers in the same order (temperature, top-k, top-p,
each with ``min_tokens_to_keep=1`` and ``-inf`` as filter value), one ``torch.multinomial`` over
every row per step (finished rows included, as ``generate`` draws for them too), so under one
seed both pick the same tokens.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from nemo_like.components.rollout.sampling import Rollout, SamplingParams
from nemo_like.components.training.cpu_threads import decoding_threads

__all__ = ["HFGenerator", "top_k_filter", "top_p_filter"]


def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` highest scores per row (ties with the k-th included), the rest ``-inf``."""
    kth = torch.topk(scores, min(top_k, scores.size(-1))).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (at least one), the rest ``-inf``.

    As ``transformers``: sort ascending and drop the tokens whose cumulative probability stays at or
    below ``1 - top_p``, so a token that straddles the boundary is kept.
    """
    ascending, order = torch.sort(scores, descending=False)
    drop_sorted = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class HFGenerator:
    """Samples ``num_generations`` completions per prompt from ``model``, sharing each prompt's encoding.

    ``eos_token_id`` may be several ids (chat models often end a turn with one of a few tokens);
    ``pad_token_id`` fills the prompt padding; completions come back unpadded.
    ``rows_left_everywhere``: for a model sharded over ranks (FSDP2), whose every forward is a collective,
    the count of rows still generating summed over ranks; then finished rows stay in the batch (their
    tokens unused) and every rank runs the same number of steps, until no rank has a row left.
    ``sampling_context``: entered around each call (e.g. LoRA adapters merged into their layers).
    ``adapt_threads``: on a CPU, decode on no more intra-op threads than other processes leave cores free
    (:func:`~nemo_like.components.training.cpu_threads.decoding_threads`); false keeps the caller's count.
    """

    def __init__(self, model: Any, eos_token_id: int | list[int], pad_token_id: int,
                 rows_left_everywhere: Callable[[int], int] | None = None,
                 sampling_context: Callable[[], contextlib.AbstractContextManager] | None = None,
                 adapt_threads: bool = True) -> None:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos or not all(isinstance(t, int) and not isinstance(t, bool) for t in eos):
            raise ValueError(f"eos_token_id must be an int or a non-empty list of ints, got {eos_token_id!r}")
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
        self.model = model
        self.eos_token_ids = eos
        self.pad_token_id = pad_token_id
        self.rows_left_everywhere = rows_left_everywhere
        self.sampling_context = sampling_context or contextlib.nullcontext
        self.adapt_threads = adapt_threads
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = set(inspect.signature(base.forward).parameters)
        # transformers 5 renamed the forward's `past_key_values` to `cache`; take whichever the model has.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._keeps_last_logits = "logits_to_keep" in params

    def generate(self, prompt_ids: list[list[int]], num_generations: int, sampling: SamplingParams) -> Rollout:
        """Completions prompt-major (prompt 0's G, then prompt 1's, ...), with their sampling log-probs."""
        if not prompt_ids or not all(len(p) > 0 for p in prompt_ids):
            raise ValueError("prompt_ids must be a non-empty list of non-empty token lists")
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}")
        start = time.perf_counter()
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()  # dropout off while sampling; each module's own mode comes back afterwards
        try:
            # not inference_mode: FSDP2 keeps the buffers it gathers into, for training too
            device = next(self.model.parameters()).device
            with torch.no_grad(), self.sampling_context(), decoding_threads(device, self.adapt_threads) as threads:
                tokens, logps, lengths, stopped = self._decode(prompt_ids, num_generations, sampling)
        finally:
            for module, training in modes:
                module.training = training
        completions = [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
        logprobs = [row[:n] for row, n in zip(logps.tolist(), lengths.tolist())]
        return Rollout(
            completion_ids=completions,
            logprobs=logprobs,
            truncated=[not s for s in stopped.tolist()],
            seconds=time.perf_counter() - start,
            generated_tokens=int(lengths.sum()),
            threads=threads,
        )

    def _decode(
        self, prompt_ids: list[list[int]], group: int, sp: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefill once per prompt, then decode all P*G rows; returns padded tokens, log-probs, lengths, EOS seen."""
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):  # left padding, so every row's next token sits in the last column
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate builds them for left padding
        config = self.model.config
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        cache = DynamicCache(config=text_config)
        padded = not bool(mask.all())  # generate drops an all-ones mask; doing the same keeps the same kernels
        logits = self._forward(ids, mask if padded else None, positions, cache)

        cache.batch_repeat_interleave(group)  # the group shares its prompt's keys and values
        logits = logits.repeat_interleave(group, dim=0)
        mask = mask.repeat_interleave(group, dim=0) if padded else None
        next_pos = positions[:, -1:].repeat_interleave(group, dim=0) + 1
        rows, steps = logits.size(0), sp.max_completion_length
        out_tokens = torch.full((rows, steps), self.pad_token_id, dtype=torch.long, device=device)
        out_logps = torch.zeros((rows, steps), dtype=torch.float32, device=device)
        lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
        stopped = torch.zeros(rows, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_token_ids, device=device)
        active = torch.arange(rows, device=device)  # rows still generating; `logits` and the cache hold only these

        live = torch.ones(rows, dtype=torch.bool, device=device)  # rows of the batch still generating
        for step in range(steps):
            tokens, logps = self._pick(logits, active, rows, sp)
            out_tokens[active[live], step], out_logps[active[live], step] = tokens[live], logps[live]
            ended = torch.isin(tokens, eos) & live
            lengths[active[ended]], stopped[active[ended]] = step + 1, True
            going = live & ~ended
            still = int(going.sum())  # the loop's one host sync per step, as generate's stop check
            if self.rows_left_everywhere is not None:  # sharded: every rank steps until all ranks are done
                live = going
                if step + 1 == steps or self.rows_left_everywhere(still) == 0:
                    break
                tokens = tokens.masked_fill(~live, self.pad_token_id)
            elif step + 1 == steps or still == 0:
                break
            elif still < going.numel():  # finished rows leave the batch and the cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, tokens, next_pos, live = active[keep], tokens[keep], next_pos[keep], live[keep]
                mask = mask[keep] if mask is not None else None
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
            logits = self._forward(tokens[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1
        return out_tokens, out_logps, lengths, stopped

    def _pick(
        self, logits: torch.Tensor, active: torch.Tensor, rows: int, sp: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token of each active row, and its log-prob under ``softmax(logits / temperature)``."""
        scaled = logits / sp.temperature
        if sp.do_sample:
            scores = scaled
            if sp.top_k:
                scores = top_k_filter(scores, sp.top_k)
            if sp.top_p < 1.0:
                scores = top_p_filter(scores, sp.top_p)
            probs = scores.softmax(dim=-1)
            if sp.sampler == "inverse_cdf":  # one uniform per row, found in the cumulative probabilities
                cumulative = probs.double().cumsum(dim=-1)
                u = torch.rand(probs.size(0), 1, dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
                tokens = torch.searchsorted(cumulative, u, right=True).squeeze(1).clamp(max=probs.size(-1) - 1)
            else:
                if active.numel() < rows:  # generate draws for finished rows too; so must we, for its RNG stream
                    full = probs.new_zeros((rows, probs.size(-1)))
                    full[:, 0] = 1.0
                    full[active] = probs
                    probs = full
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
                tokens = tokens[active] if active.numel() < rows else tokens
        else:
            tokens = logits.argmax(dim=-1)  # generate's greedy ignores temperature
        logps = scaled.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
        return tokens, logps

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """One forward step with the KV cache; the float32 logits of each row's last position."""
        extra = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_kwarg: cache}, **extra)
        return out.logits[:, -1].to(dtype=torch.float32)
