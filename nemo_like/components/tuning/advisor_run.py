"""Read a run's loss curves the way the fine-tuning guide does, and say what to change next.

Why: the guide's "what you see / what it means / what to do" tables are rules over curves. Here
each is a function over the run's ``training.jsonl`` / ``validation.jsonl`` records that returns
its evidence (steps, values) and the next overrides. Thresholds are relative to the run's own
start loss and recent median, and curves are median-smoothed, so one noisy batch does not fire a
rule and the same rules hold for a loss of 5 or of 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from nemo_like.components.tuning.advisor_runlog import RunSettings, is_finite_number
from nemo_like.components.tuning.advisor_tables import CLIP_GRAD_NORM, warmup_span

SEVERITY_ORDER = {"problem": 0, "warning": 1, "note": 2}

# Thresholds (all relative): see each rule for the guide's rule it encodes.
RISE_FACTOR = 1.5  # smoothed loss this far above the start: diverging
REBOUND_FACTOR = 1.2  # smoothed loss back up this far above its minimum ...
REBOUND_SHARE = 0.25  # ... giving back this share of what was gained: overshooting
SPIKE_FACTOR = 1.5  # one step this far above the median of the 5 before: a spike
GRAD_FACTOR = 10.0  # gradient norm this far above the median of the 20 before: an explosion
FLAT_DROP = 0.03  # less than a 3% drop of the loss: flat
PLATEAU_DROP = 0.01  # less than a 1% drop over the second half: a plateau
OVERFIT_RISE = 0.05  # validation this far above its best, with training still falling: overfitting
NOISE_LEVEL = 0.08  # median distance of a step from the median of the 5 around it (about +-30% swings): noisy
WEIGHT_DECAY_LADDER = (0.01, 0.05, 0.1)


@dataclass
class Diagnosis:
    """One finding: what it is, how bad, the evidence, and the overrides (``changes``) to try next."""

    kind: str
    severity: str  # problem | warning | note
    summary: str
    evidence: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    add_yaml: str = ""
    hint: str = ""

    def overrides(self) -> str:
        return " ".join(f"--{k} {fmt_value(v)}" for k, v in self.changes.items())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "summary": self.summary, "evidence": self.evidence,
                "changes": self.changes, "overrides": self.overrides(), "add_yaml": self.add_yaml, "hint": self.hint}


# ---------------------------------------------------------------------------------------------- helpers

def fmt_value(v: Any) -> str:
    """A value as a command-line override reads it (``3e-5``, ``0.05``, ``120``, ``True``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if v == 0:
        return "0.0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        mant, exp = f"{v:.2e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    text = f"{v:.4g}"
    return text if "." in text or "e" in text else text + ".0"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing running median: each point is the median of itself and the ``window - 1`` before."""
    return [median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def _window(n: int) -> int:
    return min(max(n // 10, 3), 25)


def _round_lr(x: float) -> float:
    return float(f"{x:.2g}")


def _lr(settings: RunSettings, factor: float) -> dict[str, Any]:
    return {"optimizer.lr": _round_lr(settings.lr * factor)} if settings.lr else {}


def _clip(settings: RunSettings) -> dict[str, Any]:
    return {} if settings.clip_grad_norm else {"clip_grad_norm.max_norm": CLIP_GRAD_NORM}


def _total_steps(settings: RunSettings, n: int) -> int:
    return settings.max_steps or n


# ---------------------------------------------------------------------------------------------- rules

def _non_finite(steps: list[int], train: list[dict[str, Any]], val: list[dict[str, Any]],
                settings: RunSettings) -> Diagnosis | None:
    """Guide: loss goes to NaN or inf -> LR far too high (or bad data): lr / 10, clip, check the data."""
    bad = [(r["step"], k, r[k]) for r in train for k in ("loss", "grad_norm")
           if k in r and isinstance(r[k], (int, float)) and not math.isfinite(r[k])]
    bad += [(r.get("step"), "val_loss", r["val_loss"]) for r in val
            if isinstance(r.get("val_loss"), (int, float)) and not math.isfinite(r["val_loss"])]
    if not bad:
        return None
    first = min(bad, key=lambda b: (b[0] if isinstance(b[0], int) else 1 << 30))
    return Diagnosis("diverging", "problem", f"{first[1]} became {first[2]} at step {first[0]}: the run diverged",
                     [f"{k} = {v} at step {s}" for s, k, v in bad[:5]],
                     {**_lr(settings, 0.1), **_clip(settings)},
                     hint="if a lower rate also fails, look for corrupt or extremely long rows")


def _diverging(steps: list[int], loss: list[float], smooth: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: loss rises far above where it started, or falls then climbs back -> LR too high."""
    n = len(loss)
    w = _window(n)
    if n < 4:
        return None
    start = median(loss[:w])  # one lucky first batch must not look like a low start
    peak = max(range(min(w - 1, n - 1), n), key=lambda i: smooth[i])
    if smooth[peak] > RISE_FACTOR * start:
        factor = smooth[peak] / start
        changes = {**_lr(settings, 0.1 if factor > 3 else 0.3), **_clip(settings)}
        if not settings.warmup_steps:
            changes["lr_scheduler.lr_warmup_steps"] = int(warmup_span(_total_steps(settings, n)).start)
        return Diagnosis("diverging", "problem",
                         f"training loss rose to {factor:.1f}x its start: the learning rate is too high",
                         [f"median loss {_num(start)} over steps {steps[0]}..{steps[w - 1]}, {_num(smooth[peak])} "
                          f"(median-smoothed) at step "
                          f"{steps[peak]}, {_num(loss[-1])} at the last step {steps[-1]}"], changes)
    low = min(range(n), key=lambda i: smooth[i])
    gained = start - smooth[low]
    back = smooth[-1] - smooth[low]
    held = n - 1 - low >= w
    if gained > 0 and held and smooth[-1] > REBOUND_FACTOR * smooth[low] and back > REBOUND_SHARE * gained:
        return Diagnosis("diverging", "problem",
                         "training loss fell, then climbed back: the optimizer overshoots",
                         [f"loss {_num(start)} -> {_num(smooth[low])} by step {steps[low]}, back to "
                          f"{_num(smooth[-1])} by step {steps[-1]} (median-smoothed)"],
                         {**_lr(settings, 0.3), **_clip(settings)})
    return None


def _gradient_explosions(steps: list[int], train: list[dict[str, Any]], settings: RunSettings) -> Diagnosis | None:
    """Guide: exploding gradients -> clip at 1.0; if clipping is on already, lower the LR."""
    pairs = [(r["step"], float(r["grad_norm"])) for r in train if is_finite_number(r.get("grad_norm"))]
    events = []
    for i in range(1, len(pairs)):
        before = median(g for _, g in pairs[max(0, i - 20): i])
        if before > 0 and pairs[i][1] > GRAD_FACTOR * before:
            events.append(f"grad_norm {_num(pairs[i][1])} at step {pairs[i][0]} ({pairs[i][1] / before:.0f}x the "
                          f"median {_num(before)} before it)")
    q = len(pairs) // 4
    if q >= 5:
        first, last = median(g for _, g in pairs[:q]), median(g for _, g in pairs[-q:])
        if first > 0 and last > GRAD_FACTOR * first:
            events.append(f"grad_norm median grew from {_num(first)} (first quarter) to {_num(last)} (last quarter)")
    if not events:
        return None
    changes = {**_clip(settings), **_lr(settings, 0.3)}
    return Diagnosis("gradient_explosion", "problem", f"gradient norm exploded ({len(events)} time(s))",
                     events[:5] + ([f"... and {len(events) - 5} more"] if len(events) > 5 else []), changes)


def _spikes(steps: list[int], loss: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: loss drops then spikes or oscillates -> LR too high: halve it, or warm up longer if early."""
    n = len(loss)
    start = abs(loss[0])
    events = []
    for i in range(3, n):
        ref = median(loss[max(0, i - 5): i])
        if ref > 0 and loss[i] > SPIKE_FACTOR * ref and loss[i] - ref > 0.05 * start:
            events.append(i)
    if not events:
        return None
    early = all(steps[i] < max(10, n // 10) for i in events)
    changes: dict[str, Any]
    if early:
        warm = warmup_span(_total_steps(settings, n))
        changes = {"lr_scheduler.lr_warmup_steps": max(int(warm.high), 2 * (settings.warmup_steps or 0))}
    else:
        changes = _lr(settings, 0.5)
    evidence = [f"loss {_num(loss[i])} at step {steps[i]} vs a median of {_num(median(loss[max(0, i - 5): i]))} "
                "over the 5 steps before" for i in events[:5]]
    return Diagnosis("loss_spikes", "warning",
                     f"{len(events)} loss spike(s)" + (" in the first steps" if early else ""), evidence, changes,
                     hint="spikes early in a run: a longer warm-up; later: a lower rate or a bigger batch")


def _warmup(steps: list[int], loss: list[float], lrs: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: the default ramp is 10% of the steps; short runs want 5-10. Loss flat while lr ramps: shorten it."""
    n = len(loss)
    if len(lrs) != n or n < 6:
        return None
    peak = max(lrs)
    if peak <= 0 or lrs[0] > 0.5 * peak:
        return None
    ramp_end = next(i for i, v in enumerate(lrs) if v >= 0.98 * peak)
    rec = warmup_span(_total_steps(settings, n))
    if ramp_end < 5 or ramp_end <= rec.high:
        return None
    half = max(ramp_end // 2, 3)
    head, mid = median(loss[:3]), median(loss[max(0, half - 2): half + 1])
    if head <= 0 or (head - mid) / head >= FLAT_DROP:
        return None
    ended = ramp_end == n - 1
    return Diagnosis("slow_warmup", "warning",
                     "loss stays flat while the learning rate is still warming up" +
                     (": the run ended before the ramp did" if ended else ""),
                     [f"lr {lrs[0]:.2g} -> {peak:.2g} over steps {steps[0]}..{steps[ramp_end]}; loss "
                      f"{_num(head)} -> {_num(mid)} by step {steps[half]}",
                      f"about {int(rec.start)} warm-up steps suit a run of {_total_steps(settings, n)} steps"],
                     {"lr_scheduler.lr_warmup_steps": int(rec.start)})


def _not_decreasing(steps: list[int], loss: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: loss barely moves over the first 50-100 steps -> LR too low: raise it 5-10x."""
    w = min(100, len(loss))
    if w < 6 or loss[0] <= 0:
        return None
    head, tail = median(loss[:3]), median(loss[w - 3: w])
    drop = (head - tail) / head
    if drop < FLAT_DROP:
        changes = _lr(settings, 5)
        if settings.peft_dim and settings.peft_dim < 16:
            changes["peft.dim"] = settings.peft_dim * 2
        return Diagnosis("not_decreasing", "problem",
                         f"training loss barely moved over the first {w} steps: the learning rate is too low",
                         [f"loss {_num(head)} at the start, {_num(tail)} around step {steps[w - 1]} "
                          f"({100 * drop:+.1f}%)"], changes,
                         hint="if a higher rate does not help, check the data format and the loss mask")
    if w >= 50 and drop < 0.10:
        return Diagnosis("slow_progress", "note", "loss falls slowly but steadily: safe, but slower than needed",
                         [f"loss {_num(head)} -> {_num(tail)} over {w} steps ({100 * drop:.1f}%)"], _lr(settings, 2))
    return None


def _overfitting(vsteps: list[int], vloss: list[float], vepochs: list[Any], steps: list[int], smooth: list[float],
                 settings: RunSettings) -> Diagnosis | None:
    """Guide: training loss falls while validation loss climbs -> stop at the best step, fewer epochs, regularize."""
    if len(vloss) < 3:
        return None
    b = min(range(len(vloss)), key=lambda i: vloss[i])
    after = vloss[b + 1:]
    best, last = vloss[b], vloss[-1]
    if len(after) < 2 or best <= 0 or last <= best * (1 + OVERFIT_RISE) or median(after) <= best * (1 + OVERFIT_RISE / 2):
        return None
    at_best = _at_step(steps, smooth, vsteps[b])
    if at_best is None or smooth[-1] >= at_best * (1 - FLAT_DROP):
        return None  # training did not keep improving: not overfitting
    changes: dict[str, Any] = {"step_scheduler.max_steps": vsteps[b] + 1}
    if settings.num_epochs and isinstance(vepochs[b], int) and vepochs[b] + 1 < settings.num_epochs:
        changes["step_scheduler.num_epochs"] = vepochs[b] + 1
    wd = settings.weight_decay or 0.0
    changes["optimizer.weight_decay"] = next((x for x in WEIGHT_DECAY_LADDER if x > wd), WEIGHT_DECAY_LADDER[-1])
    if settings.peft_dim:
        if (settings.peft_dropout or 0.0) < 0.1:
            changes["peft.dropout"] = 0.1
        if settings.peft_dim > 4:
            changes["peft.dim"] = settings.peft_dim // 2
    snippet = "" if settings.early_stopping else (
        "callbacks:\n  - _target_: nemo_like.components.callbacks.EarlyStopping\n    monitor: val_loss\n    patience: 3")
    return Diagnosis("overfitting", "problem",
                     f"validation loss was best at step {vsteps[b]} and rose after it while training loss kept "
                     "falling: overfitting",
                     [f"val_loss {_num(best)} at step {vsteps[b]} (best), {_num(last)} at step {vsteps[-1]} "
                      f"({100 * (last / best - 1):+.0f}%)",
                      f"training loss {_num(at_best)} -> {_num(smooth[-1])} over the same steps (median-smoothed)"],
                     changes, snippet,
                     hint=f"keep the checkpoint of step {vsteps[b]} (LOWEST_VAL points at it); more data also helps")


def _overfitting_onset(vsteps: list[int], vloss: list[float], steps: list[int], smooth: list[float]) -> Diagnosis | None:
    """Guide: validation flattens while training keeps dropping -> stop here, use the checkpoint at the flat point."""
    k = len(vloss) // 3
    if k < 3:
        return None
    tail = vloss[-k:]
    ref = vloss[-k - 1]
    tr0, tr1 = _at_step(steps, smooth, vsteps[-k - 1]), smooth[-1]
    if ref <= 0 or tr0 is None or tr0 <= 0:
        return None
    if (ref - min(tail)) / ref < PLATEAU_DROP and (tr0 - tr1) / tr0 > 0.10:
        return Diagnosis("overfitting_onset", "warning",
                         "validation loss flattened while training loss keeps dropping: overfitting is starting",
                         [f"val_loss {_num(ref)} at step {vsteps[-k - 1]}, at best {_num(min(tail))} since; training "
                          f"loss {_num(tr0)} -> {_num(tr1)}"],
                         {"step_scheduler.max_steps": vsteps[-k - 1] + 1})
    return None


def _plateau(steps: list[int], loss: list[float], smooth: list[float], vloss: list[float],
             settings: RunSettings) -> Diagnosis | None:
    """Guide: both losses plateau early -> raise the LR first (LoRA: also the rank); late -> it converged."""
    n = len(loss)
    if n < 20 or loss[0] <= 0:
        return None
    mid = n // 2
    if (loss[0] - smooth[mid]) / loss[0] < 0.05 or smooth[mid] <= 0:
        return None
    if (smooth[mid] - smooth[-1]) / smooth[mid] >= PLATEAU_DROP:
        return None
    half_val = vloss[len(vloss) // 2:]
    if len(half_val) >= 2 and half_val[0] > 0 and (half_val[0] - half_val[-1]) / half_val[0] >= PLATEAU_DROP:
        return None  # validation still improving
    p = next(i for i in range(n) if smooth[i] <= smooth[-1] * (1 + PLATEAU_DROP))
    evidence = [f"loss {_num(loss[0])} -> {_num(smooth[p])} by step {steps[p]}, then {_num(smooth[-1])} at step "
                f"{steps[-1]} (median-smoothed)"]
    if p <= n // 3:
        changes = _lr(settings, 2)
        if settings.peft_dim:
            changes["peft.dim"] = settings.peft_dim * 2
        return Diagnosis("plateau", "warning", f"loss plateaued early (from step {steps[p]})", evidence, changes,
                         hint=f"if this loss is already good, stop sooner: --step_scheduler.max_steps {steps[p] + 1}")
    return Diagnosis("converged", "note", f"loss levelled off from step {steps[p]}", evidence,
                     {"step_scheduler.max_steps": steps[p] + 1}, hint="later steps add little; stop there to save time")


def _noisy(steps: list[int], loss: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: a very noisy loss curve -> the batch is too small: double it (and the LR ~1.4x)."""
    n = len(loss)
    if n < 20:
        return None
    rel = []
    for i in range(2, n - 2):
        m = median(loss[i - 2: i + 3])
        if m > 0:
            rel.append(abs(loss[i] - m) / m)
    if not rel or median(rel) < NOISE_LEVEL:
        return None
    changes: dict[str, Any] = {}
    if settings.global_batch_size:
        changes["step_scheduler.global_batch_size"] = settings.global_batch_size * 2
        changes.update(_lr(settings, 1.4))
    return Diagnosis("noisy", "warning", "the loss curve is very noisy: the batch may be too small",
                     [f"a step is typically {100 * median(rel):.0f}% off the median of its neighbours"], changes)


def _still_improving(vsteps: list[int], vloss: list[float], settings: RunSettings) -> Diagnosis | None:
    """Guide: validation loss still falling at the end -> train longer (1-2 more epochs)."""
    if len(vloss) < 3 or min(vloss) != vloss[-1] or vloss[-2] <= 0 or (vloss[-2] - vloss[-1]) / vloss[-2] < 0.01:
        return None
    if settings.num_epochs and not settings.max_steps:
        changes: dict[str, Any] = {"step_scheduler.num_epochs": settings.num_epochs + 1}
    else:
        changes = {"step_scheduler.max_steps": int((settings.max_steps or vsteps[-1] + 1) * 1.5)}
    return Diagnosis("still_improving", "note", "validation loss was still falling at the end: it can train longer",
                     [f"val_loss {_num(vloss[-2])} at step {vsteps[-2]} -> {_num(vloss[-1])} at step {vsteps[-1]}"],
                     changes)


def _at_step(steps: list[int], values: list[float], step: int) -> float | None:
    """The value at the last recorded step at or before ``step``."""
    found = None
    for s, v in zip(steps, values):
        if s <= step:
            found = v
    return found


def diagnose_run(train_records: list[dict[str, Any]], val_records: list[dict[str, Any]] | None = None,
                 settings: RunSettings | None = None) -> list[Diagnosis]:
    """Findings for one run, most severe first; a single ``healthy`` note when nothing is wrong."""
    val_records = val_records or []
    train = [r for r in train_records if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int)]
    if not train:
        raise ValueError("no training steps with a loss to read")
    settings = settings or RunSettings.from_config(None, train)
    found: list[Diagnosis] = []
    bad = _non_finite([r["step"] for r in train], train, val_records, settings)
    finite = [r for r in train if math.isfinite(r["loss"])]
    steps = [r["step"] for r in finite]
    loss = [float(r["loss"]) for r in finite]
    lrs = [float(r["lr"]) for r in finite if is_finite_number(r.get("lr"))]
    val = [r for r in val_records if is_finite_number(r.get("val_loss")) and isinstance(r.get("step"), int)]
    vsteps, vloss = [r["step"] for r in val], [float(r["val_loss"]) for r in val]
    vepochs = [r.get("epoch") for r in val]
    smooth = _smooth(loss, _window(len(loss))) if loss else []

    if bad:
        found.append(bad)
    if loss and (settings.policy_gradient or min(loss) <= 0):
        # A policy-gradient objective hovers around zero: ratios to its start mean nothing.
        found.append(Diagnosis("loss_not_judged", "note", "the loss is not a positive error (an RL objective): "
                               "only non-finite values, gradient norms and validation are judged",
                               [f"loss ranges {_num(min(loss))} .. {_num(max(loss))}"]))
        loss, smooth = [], []
    diverging = bad or (_diverging(steps, loss, smooth, settings) if loss else None)
    if diverging and not bad:
        found.append(diverging)
    grads = _gradient_explosions(steps, finite, settings)
    if grads:
        found.append(grads)
    if not diverging and loss:
        warm = _warmup(steps, loss, lrs, settings)
        rules = [warm, None if warm else _not_decreasing(steps, loss, settings),
                 _spikes(steps, loss, settings),
                 _overfitting(vsteps, vloss, vepochs, steps, smooth, settings)]
        if not rules[-1]:
            rules.append(_overfitting_onset(vsteps, vloss, steps, smooth))
        stuck = any(d and d.kind in ("not_decreasing", "slow_warmup", "overfitting", "overfitting_onset")
                    for d in rules)
        if not stuck:
            rules += [_plateau(steps, loss, smooth, vloss, settings), _still_improving(vsteps, vloss, settings)]
        noisy = _noisy(steps, loss, settings)
        if noisy:  # in a noisy curve the "spikes" are the noise itself
            rules = [d for d in rules if not (d and d.kind == "loss_spikes")] + [noisy]
        found += [d for d in rules if d]
    if not val:
        found.append(Diagnosis("no_validation", "note", "no validation loss recorded: overfitting cannot be judged",
                               ["validation.jsonl is missing or empty"],
                               hint="add a validation_dataset (5-10% of the data) and step_scheduler.val_every_steps"))
    if not any(d.severity in ("problem", "warning") for d in found):
        evidence = [f"training loss {_num(loss[0])} -> {_num(smooth[-1])} over {len(loss)} steps (median-smoothed)"
                    ] if loss else []
        if vloss:
            b = min(range(len(vloss)), key=lambda i: vloss[i])
            evidence.append(f"val_loss {_num(vloss[0])} -> {_num(vloss[-1])}; best {_num(vloss[b])} at step {vsteps[b]}")
        summary = ("the run looks healthy: the loss falls without spikes" + (", validation follows it" if vloss else "")
                   if loss else "nothing looks wrong")
        found.insert(0, Diagnosis("healthy", "note", summary, evidence))
    found.sort(key=lambda d: SEVERITY_ORDER[d.severity])
    return found


def recommended_changes(diagnoses: list[Diagnosis]) -> dict[str, Any]:
    """All the findings' overrides in one set; where two disagree, the more severe finding wins."""
    merged: dict[str, Any] = {}
    for d in sorted(diagnoses, key=lambda d: SEVERITY_ORDER[d.severity]):
        for k, v in d.changes.items():
            merged.setdefault(k, v)
    return merged
