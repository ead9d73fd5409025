"""The fine-tuning guide as code: starting values from a data set's size, run diagnoses, ``tune.yaml``.

Why: the guide's tables and rules of thumb are easy to misread and tedious to apply by hand. Here a
row count and a method give the starting values (each with its range and reason) and the command-line
overrides to paste; ``diagnose_run`` (in ``advisor_run``) reads a run's loss curves; ``tune_yaml``
writes a search centred on either recommendation for ``nemo-like tune``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from nemo_like.components.tuning.advisor_run import Diagnosis, diagnose_run, fmt_value, recommended_changes
from nemo_like.components.tuning.advisor_runlog import RunSettings, read_run
from nemo_like.components.tuning.advisor_tables import (
    ALPHA_FACTOR,
    BUCKET_LABELS,
    CLIP_GRAD_NORM,
    DPO_BETA,
    DPO_EPOCHS,
    GRPO_NUM_GENERATIONS,
    GRPO_PROMPTS_DIVISOR,
    LORA,
    SFT,
    Span,
    size_bucket,
    warmup_span,
)

__all__ = ["Advice", "Diagnosis", "RunSettings", "Setting", "dataset_advice", "dataset_search_space", "diagnose_run",
           "fixed_overrides", "fmt_value", "parse_model_size", "read_run", "recommended_changes", "run_search_space",
           "tune_yaml"]

METHODS = ("sft", "lora", "dpo", "grpo")


@dataclass
class Setting:
    """One recommended value: the override key, where to start, the range to stay in, and why."""

    key: str
    value: Any
    low: Any = None
    high: Any = None
    why: str = ""

    def range_text(self) -> str:
        if self.low is None or self.high is None or self.low == self.high:
            return ""
        return f"{fmt_value(self.low)} .. {fmt_value(self.high)}"


@dataclass
class Advice:
    """Starting values for one data set and method, with the numbers they were derived from."""

    method: str
    rows: int
    bucket: str
    lora: bool
    steps_per_epoch: int
    total_steps: int
    settings: list[Setting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> Setting:
        for s in self.settings:
            if s.key == key:
                return s
        raise KeyError(key)

    def has(self, key: str) -> bool:
        return any(s.key == key for s in self.settings)

    def overrides(self) -> list[str]:
        """``--key value`` pairs, flattened, in the order of the settings."""
        out: list[str] = []
        for s in self.settings:
            out += [f"--{s.key}", fmt_value(s.value)]
        return out

    def override_line(self) -> str:
        pairs = self.overrides()
        return " ".join(f"{pairs[i]} {pairs[i + 1]}" for i in range(0, len(pairs), 2))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bucket_label": BUCKET_LABELS[self.bucket], "overrides": self.override_line()}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)


def parse_model_size(text: str | None) -> float | None:
    """``135M`` -> 1.35e8, ``1.5B`` -> 1.5e9, ``8b`` -> 8e9; None when not given."""
    if text is None or str(text).strip() == "":
        return None
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"model size {text!r}: expected a parameter count such as 135M, 1.5B or 8B")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m[2].lower()]
    return float(m[1]) * scale


def _round_nice(x: float) -> float:
    """A learning rate rounded to 1, 2, 3 or 5 times a power of ten, for readable overrides."""
    if x <= 0:
        return x
    exp = math.floor(math.log10(x))
    mant = x / 10**exp
    nice = min((1, 2, 3, 5, 10), key=lambda m: abs(math.log(mant / m)))
    return float(f"{nice * 10**exp:.3g}")


def _ceil_div(a: int, b: int) -> int:
    return max(1, -(-a // b))


def dataset_advice(rows: int, method: str, model_size: float | None = None, lora: bool | None = None,
                   tokens_per_row: float | None = None, tokens_p95: int | None = None) -> Advice:
    """Starting values and ranges for ``rows`` training rows and a method (``sft``, ``lora``, ``dpo``, ``grpo``).

    ``lora`` (default: on for every method but ``sft``) picks the guide's PEFT row; ``model_size``
    (parameters) moves the micro-batch within its range; token counts add packing and size notes.
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if rows < 1:
        raise ValueError(f"rows: expected a positive count, got {rows}")
    use_lora = method != "sft" if lora is None else bool(lora)
    if method == "lora":
        use_lora = True
    bucket = size_bucket(rows)
    sft, peft = SFT[bucket], LORA[bucket]
    table = "LoRA" if use_lora else "SFT"
    label = BUCKET_LABELS[bucket]
    settings: list[Setting] = []
    notes: list[str] = []

    lr = peft["optimizer.lr"] if use_lora else sft["optimizer.lr"]
    lr_why = (f"{label}, {table} row: adapters train few weights and take ~10x the full fine-tune rate"
              if use_lora else f"{label}, SFT row: every weight moves, so steps stay small")
    if method in ("dpo", "grpo"):
        lr_why = f"no {method.upper()} table in the guide: its {table} row for {label}; lower it if rewards collapse"
    settings.append(Setting("optimizer.lr", lr.start, lr.low, lr.high, lr_why))

    wd = sft["optimizer.weight_decay"]
    wd_why = {"small": "little data overfits: regularize more",
              "medium": "a light regularizer is enough at this size",
              "large": "plenty of data regularizes by itself"}[bucket]
    settings.append(Setting("optimizer.weight_decay", wd.start, wd.low, wd.high, wd_why))

    gbs = (peft if use_lora else sft)["step_scheduler.global_batch_size"]
    gbs_start, gbs_low, gbs_high = int(gbs.start), int(gbs.low), int(gbs.high)
    gbs_why = f"{label}: bigger data affords bigger, smoother batches"
    if method == "grpo":
        gbs_start, gbs_low, gbs_high = (max(2, v // GRPO_PROMPTS_DIVISOR) for v in (gbs_start, gbs_low, gbs_high))
        gbs_why = (f"prompts per step: a quarter of the SFT batch, since each prompt yields "
                   f"{int(GRPO_NUM_GENERATIONS.start)} scored completions")
    gbs_start = min(gbs_start, max(gbs_low, _pow2_floor(rows)))  # a batch larger than the data set is one step
    steps_per_epoch = _ceil_div(rows, gbs_start)

    if method == "grpo":
        epochs = 1
        total = steps_per_epoch
        settings.append(Setting("step_scheduler.max_steps", total, max(1, total // 2), total,
                                "one pass over the prompts; RL steps are costly, so stop early if rewards stall"))
    else:
        ep = DPO_EPOCHS if method == "dpo" else (peft if use_lora else sft)["step_scheduler.num_epochs"]
        epochs = int(ep.start)
        ep_why = {"small": "small data: past 3 epochs it almost always overfits",
                  "medium": "a few passes; stop where validation loss turns up",
                  "large": "one pass over large data is often all it needs"}[bucket]
        if method == "dpo":
            ep_why = "preference margins saturate fast: one epoch, a second only if validation still improves"
        settings.append(Setting("step_scheduler.num_epochs", epochs, int(ep.low), int(ep.high), ep_why))
        total = steps_per_epoch * epochs
    settings.append(Setting("step_scheduler.global_batch_size", gbs_start, gbs_low, gbs_high, gbs_why))

    local = sft["step_scheduler.local_batch_size"]
    local_start = int(local.start)
    local_why = "per-device micro-batch; out of memory: halve it, keep the global batch"
    if model_size is not None and model_size < 1e9:
        local_start = int(local.high)
        local_why = "a small model fits the top of the range; out of memory: halve it, keep the global batch"
    local_start = min(local_start, gbs_start)
    settings.append(Setting("step_scheduler.local_batch_size", local_start, int(local.low), int(local.high), local_why))

    warm = warmup_span(total)
    settings.append(Setting("lr_scheduler.lr_warmup_steps", int(warm.start), int(warm.low), int(warm.high),
                            f"{total} steps in all: a short ramp avoids early spikes without wasting steps"))
    settings.append(Setting("lr_scheduler.lr_decay_style", "cosine", why="decays smoothly to min_lr by the last step"))
    min_lr = sft["lr_scheduler.min_lr"].start if not use_lora else _round_nice(lr.start / 10)
    settings.append(Setting("lr_scheduler.min_lr", min_lr,
                            why="a floor a decade or so under the peak, so the last steps still learn"))

    if use_lora:
        dim, drop = peft["peft.dim"], peft["peft.dropout"]
        lo_f, hi_f = ALPHA_FACTOR[bucket]
        settings.append(Setting("peft.dim", int(dim.start), int(dim.low), int(dim.high),
                                "start at the low end of the rank range; raise it if training loss stalls high"))
        settings.append(Setting("peft.alpha", int(dim.start) * lo_f, int(dim.start) * lo_f, int(dim.start) * hi_f,
                                f"scale alpha/rank = {lo_f}: stable; beyond 4x rank it turns unstable"))
        settings.append(Setting("peft.dropout", drop.start, drop.low, drop.high,
                                "adapter dropout regularizes small data; large data needs little"))

    settings.append(Setting("clip_grad_norm.max_norm", CLIP_GRAD_NORM, why="keeps a bad batch from blowing up the step"))
    val_every = min(max(total // 20, 1), 200)
    settings.append(Setting("step_scheduler.val_every_steps", val_every,
                            why="about 20 validations per run, to catch the step where validation loss is lowest"))

    if method == "dpo":
        settings.append(Setting("dpo.beta", DPO_BETA.start, DPO_BETA.low, DPO_BETA.high,
                                "how far the policy may leave the reference: higher stays closer"))
    if method == "grpo":
        g = GRPO_NUM_GENERATIONS
        settings.append(Setting("grpo.num_generations", int(g.start), int(g.low), int(g.high),
                                "completions compared per prompt: more gives steadier advantages, costs more"))

    notes.append(f"{rows:,} rows / batch {gbs_start} = {steps_per_epoch:,} steps per epoch, about {total:,} steps")
    if method == "sft" and bucket == "small":
        notes.append("small data: LoRA (--method lora) overfits less and keeps the base model's skills")
    if model_size is not None and model_size >= 7e9 and not use_lora:
        notes.append("a full fine-tune of a model this size needs several GPUs; LoRA or QLoRA fits on one")
    if tokens_per_row is not None:
        notes.append(f"about {tokens_per_row:,.0f} tokens per row, {tokens_per_row * rows * epochs:,.0f} tokens "
                     "to train on in all")
        if tokens_p95 is not None and method in ("sft", "lora") and tokens_p95 >= 2 * tokens_per_row:
            size = _ceil_div(int(tokens_p95), 64) * 64
            notes.append(f"row lengths vary a lot (95th percentile {tokens_p95} tokens): packing saves padding, "
                         f"--packed_sequence.packed_sequence_size {size}")
    notes.append(f"hold out 5-10% of the rows for validation (about {max(1, rows // 20):,}) and keep the "
                 "checkpoint with the lowest validation loss")
    return Advice(method=method, rows=rows, bucket=bucket, lora=use_lora, steps_per_epoch=steps_per_epoch,
                  total_steps=total, settings=settings, notes=notes)


def _pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


# ---------------------------------------------------------------------------------------------- tune.yaml

def lr_bounds(center: float, span: Span | None = None, factor: float = 3.0) -> tuple[float, float]:
    """A log-symmetric interval around ``center``: at least ``factor`` each way, wide enough to hold ``span``."""
    f = factor
    if span is not None and center > 0:
        f = max(f, span.high / center, center / span.low if span.low > 0 else f)
    return float(f"{center / f:.3g}"), float(f"{center * f:.3g}")


def rank_choices(dim: int) -> list[int]:
    """Half, the same and double the rank (at least 2)."""
    return sorted({max(2, dim // 2), dim, dim * 2})


def dataset_search_space(advice: Advice) -> dict[str, dict[str, Any]]:
    """Learning rate around the start (covering the guide's range), rank, weight decay, epochs or steps."""
    lr = advice.get("optimizer.lr")
    low, high = lr_bounds(lr.value, Span(lr.low, lr.high, lr.value))
    space: dict[str, dict[str, Any]] = {"optimizer.lr": {"type": "loguniform", "low": low, "high": high}}
    if advice.has("peft.dim"):
        space["peft.dim"] = {"type": "categorical", "choices": rank_choices(int(advice.get("peft.dim").value))}
    wd = advice.get("optimizer.weight_decay")
    choices = sorted({wd.low, wd.value, wd.high})
    if len(choices) > 1:
        space["optimizer.weight_decay"] = {"type": "categorical", "choices": choices}
    if advice.has("step_scheduler.num_epochs"):
        ep = advice.get("step_scheduler.num_epochs")
        if ep.high > ep.low:
            space["step_scheduler.num_epochs"] = {"type": "categorical", "choices": list(range(ep.low, ep.high + 1))}
    if advice.has("dpo.beta"):
        space["dpo.beta"] = {"type": "loguniform", "low": DPO_BETA.low, "high": 2 * DPO_BETA.start}
    if advice.has("grpo.num_generations"):
        space["grpo.num_generations"] = {"type": "categorical", "choices": [4, 8, 16]}
    return space


def run_search_space(diagnoses: list[Diagnosis], settings: RunSettings) -> dict[str, dict[str, Any]]:
    """Centred on what the diagnoses recommend next (else on the run's own values)."""
    changes = recommended_changes(diagnoses)
    lr = changes.get("optimizer.lr", settings.lr)
    space: dict[str, dict[str, Any]] = {}
    if lr:
        low, high = lr_bounds(float(lr))
        space["optimizer.lr"] = {"type": "loguniform", "low": low, "high": high}
    dim = changes.get("peft.dim", settings.peft_dim)
    if dim:
        space["peft.dim"] = {"type": "categorical", "choices": rank_choices(int(dim))}
    steps = changes.get("step_scheduler.max_steps")
    if steps:
        steps = int(steps)
        space["step_scheduler.max_steps"] = {"type": "categorical",
                                             "choices": sorted({max(1, steps // 2), steps, steps + steps // 2})}
    wd = changes.get("optimizer.weight_decay")
    if wd is not None:
        space["optimizer.weight_decay"] = {"type": "categorical", "choices": sorted({settings.weight_decay or 0.0, wd})}
    return space


def fixed_overrides(changes: dict[str, Any], search_space: dict[str, Any]) -> dict[str, Any]:
    """The recommended values the search does not vary: every trial runs with them."""
    return {k: v for k, v in changes.items() if k not in search_space}


def tune_yaml(recipe: str, search_space: dict[str, dict[str, Any]], output_dir: str = "tune_runs",
              n_trials: int = 8, seed: int = 0, metric: str = "val_loss",
              overrides: dict[str, Any] | None = None, method: str | None = None) -> dict[str, Any]:
    """The ``tuning:`` document ``nemo-like tune`` reads: a TPE search over ``search_space`` minimizing ``metric``,
    each trial also taking the fixed ``overrides``."""
    if not search_space:
        raise ValueError("tune: the search space is empty")
    tuning: dict[str, Any] = {"recipe": recipe}
    if method:
        tuning["method"] = method
    tuning.update({
        "output_dir": output_dir,
        "n_trials": int(n_trials),
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": int(seed)},
        "search_space": search_space,
        "objectives": [{"metric": metric, "direction": "minimize"}],
    })
    if overrides:
        tuning["overrides"] = fixed_overrides(overrides, search_space)
    return {"tuning": tuning}
