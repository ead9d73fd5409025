"""The search: ask Optuna for parameters, run each trial as its own process, tell Optuna the outcome.

The study lives in its storage (SQLite by default), so starting the same command again resumes
it: finished trials stay, a trial that an earlier, killed tuner left running is recorded FAIL
("interrupted") and its slot runs again, and the study stops at ``n_trials`` counted trials.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from nemo_like.recipes.tune import reports
from nemo_like.components.tuning.run_metrics import MissingMetric
from nemo_like.recipes.tune.samplers import build_pruner, build_sampler
from nemo_like.components.tuning.search_space import ParamSpec
from nemo_like.recipes.tune.trial_config import (
    COMMANDS, base_recipe, check_recipe, method_of, trial_recipe, write_recipe,
)
from nemo_like.components.tuning.trial_runner import TrialOutcome, run_trial
from nemo_like.recipes.tune.tune_config import TuneConfig
from nemo_like.config.errors import ConfigError

INTERRUPTED = "interrupted"


def run_study(tc: TuneConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the study to ``tc.n_trials`` counted trials; returns the study and what was written."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    build_sampler(tc.sampler, tc.params, where=tc.where("sampler"))
    pruner = build_pruner(tc.pruner, where=tc.where("pruner"))
    method = method_of(base_recipe(tc), tc.method)
    check_recipe(tc, method, {p.path: _probe(p) for p in tc.params})
    tc.output_dir.mkdir(parents=True, exist_ok=True)
    study = _open_study(tc, pruner)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                       optuna.trial.TrialState.WAITING)):
        study._storage.set_trial_user_attr(t._trial_id, "reason", INTERRUPTED)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        say(f"trial_{t.number}: left running by a stopped tuner; recorded FAIL ({INTERRUPTED}), its slot runs again")
    runner = _Runner(study, tc, method, say)
    if runner.remaining():
        say(f"study '{tc.study_name}' ({tc.storage}): {runner.counted()} of {tc.n_trials} trials done, "
            f"method {method}, output {tc.output_dir}")
        if tc.n_jobs == 1:
            runner.work()
        else:
            with ThreadPoolExecutor(tc.n_jobs) as pool:
                for future in [pool.submit(runner.work) for _ in range(tc.n_jobs)]:
                    future.result()
    return _finish(study, tc, method, say)


class _Runner:
    """Hands out trial slots (one lock for Optuna's ask/tell and the reports) and runs trials."""

    def __init__(self, study: Any, tc: TuneConfig, method: str, say: Callable[[str], None]) -> None:
        self.study, self.tc, self.method, self.say = study, tc, method, say
        self.lock = threading.RLock()  # re-entered: a finished trial is told under the lock held for its report
        self.in_flight = 0
        self.error: BaseException | None = None

    def counted(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state.is_finished() and t.user_attrs.get("reason") != INTERRUPTED)

    def remaining(self) -> int:
        return max(0, self.tc.n_trials - self.counted() - self.in_flight)

    def work(self) -> None:
        while True:
            with self.lock:
                if self.error is not None or not self.remaining():
                    return
                slot = self.counted() + self.in_flight
                sampler = build_sampler(self.tc.sampler, self.tc.params, slot)
                if hasattr(sampler, "is_exhausted") and sampler.is_exhausted(self.study):
                    return
                self.study.sampler = sampler
                trial = self.study.ask()
                values = {p.path: p.suggest(trial) for p in self.tc.params}
                self.in_flight += 1
            try:
                self._run(slot, trial, values)
            except BaseException as err:  # a stop (Ctrl-C, a missing metric) ends every worker
                self.error = err
                raise

    def _run(self, slot: int, trial: Any, values: dict[str, Any]) -> None:
        tc = self.tc
        run_dir = tc.output_dir / f"trial_{trial.number}"
        pruning = None if tc.pruner is None else {
            "storage": tc.storage, "study_name": tc.study_name, "trial_number": trial.number,
            "metric": tc.objectives[0].metric, "pruner": dict(tc.pruner)}
        try:
            recipe = trial_recipe(tc, values, str(run_dir), pruning)
            write_recipe(recipe, run_dir / reports.TRIAL_YAML,
                         f"# trial {trial.number} of study '{tc.study_name}' (slot {slot + 1} of {tc.n_trials})\n")
            trial.set_user_attr("run_dir", str(run_dir))
            outcome = run_trial(COMMANDS[self.method], run_dir / reports.TRIAL_YAML, run_dir,
                                tc.objectives, tc.trial_timeout_s)
        except MissingMetric as err:
            self._finish(trial, TrialOutcome("FAIL", 0.0, 0, reason=str(err)))
            raise ConfigError(f"{tc.where('objectives')}: {err}") from None
        except BaseException:
            self._finish(trial, TrialOutcome("FAIL", 0.0, 0, reason=INTERRUPTED))
            raise
        with self.lock:
            self._finish(trial, outcome)
            self.say(_progress(slot, tc, trial.number, outcome, values))
            reports.write_results_csv(self.study, tc, tc.output_dir / "trials_results.csv")
            reports.prune_checkpoints(self.study, tc)

    def _finish(self, trial: Any, outcome: TrialOutcome) -> None:
        """Tell the study and leave the slots in flight in one step: the next slot number is counted + in flight,
        which must never see a trial both counted and still in flight."""
        with self.lock:
            self._tell(trial, outcome)
            self.in_flight -= 1

    def _tell(self, trial: Any, outcome: TrialOutcome) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("duration_s", round(outcome.duration_s, 3))
        trial.set_user_attr("steps", outcome.steps)
        if outcome.reason:
            trial.set_user_attr("reason", outcome.reason)
        if outcome.values:
            trial.set_user_attr("metrics", {o.metric: v for o, v in zip(self.tc.objectives, outcome.values)})
        if outcome.state == "COMPLETE":
            self.study.tell(trial, outcome.values)
        else:
            self.study.tell(trial, state=TrialState[outcome.state])


def _open_study(tc: TuneConfig, pruner: Any) -> Any:
    """Create the study, or load it (``load_if_exists``) after checking it searches the same thing."""
    import optuna

    directions = [o.direction for o in tc.objectives]
    space = {p.path: repr(p) for p in tc.params}
    try:
        study = optuna.create_study(storage=tc.storage, study_name=tc.study_name, directions=directions,
                                    load_if_exists=tc.load_if_exists, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(f"{tc.where('study_name')}: study '{tc.study_name}' exists in {tc.storage}; set "
                          "load_if_exists: true to resume it, or choose another study_name") from None
    except ValueError as err:  # an unreadable storage URL
        raise ConfigError(f"{tc.where('storage')}: {err}") from None
    stored_dirs = [d.name.lower() for d in study.directions]
    if stored_dirs != directions:
        raise ConfigError(f"{tc.where('objectives')}: study '{tc.study_name}' in {tc.storage} optimizes "
                          f"{', '.join(stored_dirs)}; these objectives ({', '.join(directions)}) need a new study_name")
    stored = study.user_attrs.get("search_space")
    if stored is None:
        study.set_user_attr("search_space", space)
        study.set_user_attr("objectives", [o.metric for o in tc.objectives])
    elif stored != space or study.user_attrs.get("objectives") != [o.metric for o in tc.objectives]:
        raise ConfigError(f"{tc.where('search_space')}: study '{tc.study_name}' in {tc.storage} searched another "
                          "space or objectives; resume it unchanged, or choose another study_name")
    return study


def _finish(study: Any, tc: TuneConfig, method: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The final reports and a summary line."""
    command = COMMANDS[method]
    reports.write_results_csv(study, tc, tc.output_dir / "trials_results.csv")
    reports.prune_checkpoints(study, tc)
    base_dir = base_recipe(tc).get("checkpoint.checkpoint_dir")
    rerun_dir = str(tc.overrides.get("checkpoint.checkpoint_dir") or base_dir or tc.output_dir / "best")
    written = reports.write_best(study, tc, command, rerun_dir)
    plot = reports.plot_study(study, tc, tc.output_dir / "optimization.png")
    best = reports.best_trials(study)
    if not best:
        say(f"no trial finished; see {tc.output_dir / 'trials_results.csv'}")
    elif len(tc.objectives) == 1:
        t = best[0]
        say(f"best: trial_{t.number} {tc.objectives[0].metric}={t.values[0]:.6g} {_params(t.params)}; "
            f"rerun: nemo-like {command} -c {written[0]}")
    else:
        say(f"Pareto front: {len(best)} trials (trial_{', trial_'.join(str(t.number) for t in best)}); "
            f"{tc.output_dir / 'pareto_front.csv'}")
    return {"study": study, "method": method, "best": best, "written": written, "plot": plot,
            "results": tc.output_dir / "trials_results.csv"}


def _progress(slot: int, tc: TuneConfig, number: int, outcome: TrialOutcome, values: dict[str, Any]) -> str:
    """``trial 3/8: finished val_loss=1.234 in 12.3 s {optimizer.lr: ...}``."""
    folder = f" [trial_{number}]" if number != slot else ""
    if outcome.state == "COMPLETE":
        what = "finished " + " ".join(f"{o.metric}={v:.4g}" for o, v in zip(tc.objectives, outcome.values))
    elif outcome.state == "PRUNED":
        what = f"pruned at step {outcome.pruned_step} ({outcome.reason})"
    else:
        what = f"failed ({outcome.reason})"
    return f"trial {slot + 1}/{tc.n_trials}{folder}: {what} in {outcome.duration_s:.1f} s {_params(values)}"


def _params(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                           for k, v in values.items()) + "}"


def _probe(p: ParamSpec) -> Any:
    """A value inside the range, for checking the recipe once before the trials."""
    if p.kind == "categorical":
        return p.choices[0]
    if p.kind == "int":
        return int(p.low)
    if p.kind == "loguniform" or p.log:
        return float(math.sqrt(float(p.low) * float(p.high)))
    return float(p.low)
