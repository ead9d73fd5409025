"""What a study leaves in its output folder: the table of trials, the best recipe(s), the plot,
and only the checkpoints asked for.

The table and the kept checkpoints are rewritten after every trial, so a study stopped halfway
still shows what it found and does not fill the disk with checkpoints nobody will use.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any

from nemo_like.components.checkpoint.pointers import LATEST, LOWEST_VAL, STEP_DIR
from nemo_like.recipes.tune.trial_config import PRUNING_TARGET, write_recipe
from nemo_like.recipes.tune.tune_config import TuneConfig
from nemo_like.config.loader import load_yaml_config

TRIAL_YAML = "trial.yaml"


def finished(study: Any) -> list[Any]:
    """COMPLETE trials, in order."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_trials(study: Any) -> list[Any]:
    """The best trial (one objective) or the Pareto front (several); empty before any finished."""
    if not finished(study):
        return []
    if len(study.directions) > 1:
        return list(study.best_trials)
    return [study.best_trial]


def write_results_csv(study: Any, tc: TuneConfig, path: Path, trials: list[Any] | None = None) -> None:
    """One row per trial: number, state, each parameter, each objective, steps, duration, run dir, reason."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    params = [p.path for p in tc.params]
    metrics = [o.metric for o in tc.objectives]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["number", "state", *params, *metrics, "steps", "duration_s", "run_dir", "reason"])
        for t in trials:
            values = t.values or [t.user_attrs.get("metrics", {}).get(m) for m in metrics]
            duration = t.user_attrs.get("duration_s")
            writer.writerow([
                t.number, t.state.name, *[t.params.get(p, "") for p in params],
                *["" if v is None else v for v in values],
                t.user_attrs.get("steps", ""), "" if duration is None else f"{duration:.1f}",
                t.user_attrs.get("run_dir", ""), t.user_attrs.get("reason", ""),
            ])
    tmp.replace(path)


def write_best(study: Any, tc: TuneConfig, command: str, rerun_dir: str) -> list[Path]:
    """``best_trial.yaml`` (one objective) or ``pareto_front.csv`` + ``pareto/trial_<n>.yaml`` (several)."""
    best = best_trials(study)
    if not best:
        return []
    if len(study.directions) == 1:
        out = tc.output_dir / "best_trial.yaml"
        _rerunnable(best[0], tc, command, rerun_dir, out)
        return [out]
    write_results_csv(study, tc, tc.output_dir / "pareto_front.csv", best)
    written = []
    for t in best:
        out = tc.output_dir / "pareto" / f"trial_{t.number}.yaml"
        _rerunnable(t, tc, command, f"{rerun_dir}/trial_{t.number}", out)
        written.append(out)
    return written


def _rerunnable(trial: Any, tc: TuneConfig, command: str, rerun_dir: str, out: Path) -> None:
    """The trial's recipe as it ran, minus the pruning callback, writing into ``rerun_dir``."""
    node = load_yaml_config(Path(trial.user_attrs["run_dir"]) / TRIAL_YAML, resolve=False)
    callbacks = [c for c in node.get("callbacks") or []
                 if not (hasattr(c, "get") and c.get("_target_") == PRUNING_TARGET)]
    if callbacks:
        node["callbacks"] = callbacks
    elif "callbacks" in node:
        del node["callbacks"]
    node.set_by_path("checkpoint.checkpoint_dir", rerun_dir)
    scores = ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(tc.objectives, trial.values))
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    header = (f"# trial {trial.number} of study '{tc.study_name}': {scores}\n# parameters: {params}\n"
              f"# rerun: nemo-like {command} -c {out}\n")
    write_recipe(node, out, header)


def prune_checkpoints(study: Any, tc: TuneConfig) -> None:
    """Delete the step checkpoints of trials not kept: ``best`` keeps the best (or Pareto) trials', ``none`` all."""
    if tc.keep_checkpoints == "all":
        return
    keep = {t.number for t in best_trials(study)} if tc.keep_checkpoints == "best" else set()
    for t in study.get_trials(deepcopy=False):
        run_dir = t.user_attrs.get("run_dir")
        if t.number in keep or not run_dir or not Path(run_dir).is_dir() or t.state.name == "RUNNING":
            continue
        for entry in Path(run_dir).iterdir():
            if entry.is_dir() and STEP_DIR.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name in (LATEST, LOWEST_VAL):
                entry.unlink(missing_ok=True)


def plot_study(study: Any, tc: TuneConfig, path: Path) -> Path | None:
    """History of the (first) objective, the Pareto front for two objectives, parameter importances when
    Optuna can compute them; None with fewer than two finished trials."""
    done = finished(study)
    if len(done) < 2 or not tc.params:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = tc.objectives[0]
    importances = _importances(study, first.direction)
    panels = 1 + (len(tc.objectives) >= 2) + (importances is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    ax.scatter([t.number for t in done], [t.values[0] for t in done], label="finished", color="tab:blue")
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.values]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.values[0] for t in pruned], label="pruned (last report)",
                   facecolors="none", edgecolors="tab:gray")
    pick = min if first.direction == "minimize" else max
    best_so_far, running = [], None
    for t in done:
        running = t.values[0] if running is None else pick(running, t.values[0])
        best_so_far.append(running)
    ax.step([t.number for t in done], best_so_far, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=first.metric, title="optimization history")
    ax.legend(fontsize=8)
    column = 1
    if len(tc.objectives) >= 2:
        ax = axes[0][column]
        front = {t.number for t in best_trials(study)}
        ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], color="tab:gray", label="trials")
        on = [t for t in done if t.number in front]
        ax.scatter([t.values[0] for t in on], [t.values[1] for t in on], color="tab:red", label="Pareto front")
        ax.set(xlabel=tc.objectives[0].metric, ylabel=tc.objectives[1].metric, title="Pareto front")
        ax.legend(fontsize=8)
        column += 1
    if importances is not None:
        ax = axes[0][column]
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:green")
        ax.set(xlabel=f"importance for {first.metric}", title="parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _importances(study: Any, direction: str) -> dict[str, float] | None:
    """Optuna's importances for the first objective (its evaluator looks for low values, so a maximized one
    is negated); None when it cannot compute them (too few trials, a parameter that never varied)."""
    import warnings

    import optuna

    sign = 1.0 if direction == "minimize" else -1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0])
    except Exception:  # noqa: BLE001 - importances are a bonus; the plot goes on without them
        return None
    found = {k: float(v) for k, v in found.items() if math.isfinite(float(v))}
    return found or None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
