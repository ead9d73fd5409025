"""One trial: the real recipe run by the ``nemo-like`` command in a process of its own.

A separate process per trial keeps a crash, a diverged loss or leaked memory in one trial
from touching the others, and runs exactly what ``nemo-like <method> -c trial.yaml`` runs.
The exit status tells the outcome: 0 finished (or pruned, when the run left ``PRUNED.json``),
2 a config or data error, 3 a non-finite loss; the run's last ``error:`` line is the reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nemo_like.components.tuning.pruning import MARKER
from nemo_like.components.tuning.run_metrics import Objective, objective_value, steps_run

EXIT_REASONS = {2: "config or data error", 3: "non-finite loss (diverged)", 124: "timed out"}


@dataclass
class TrialOutcome:
    """``state``: COMPLETE, PRUNED or FAIL; ``values`` in objective order (COMPLETE only)."""

    state: str
    duration_s: float
    steps: int
    values: list[float] = field(default_factory=list)
    reason: str = ""
    pruned_step: int | None = None


def run_trial(command: str, trial_yaml: Path, run_dir: Path, objectives: list[Objective],
              timeout_s: float | None = None) -> TrialOutcome:
    """Run one trial to its end and read its objectives; a missing metric raises ``MissingMetric``."""
    log_path = run_dir / "run.log"
    cmd = [sys.executable, "-m", "nemo_like.cli", command, "-c", str(trial_yaml)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = 124
        except BaseException:  # the tuner itself is stopped: do not leave the run behind
            proc.kill()
            proc.wait()
            raise
    duration = time.monotonic() - start
    steps = steps_run(run_dir)
    marker = run_dir / MARKER
    if code == 0 and marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        return TrialOutcome("PRUNED", duration, steps, reason=str(info.get("reason", "")),
                            pruned_step=int(info["step"]))
    if code != 0:
        return TrialOutcome("FAIL", duration, steps, reason=_reason(code, log_path))
    values = [objective_value(run_dir, o) for o in objectives]
    bad = [o.metric for o, v in zip(objectives, values) if not math.isfinite(v)]
    if bad:
        return TrialOutcome("FAIL", duration, steps, values, reason=f"{bad[0]} is not finite")
    return TrialOutcome("COMPLETE", duration, steps, values)


def _reason(code: int, log_path: Path) -> str:
    """The run's own last ``error:`` line, else what its exit status means, else the last log line."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.is_file() else []
    errors = [line for line in lines if line.startswith("error:")]
    meaning = EXIT_REASONS.get(code, f"signal {-code}" if code < 0 else "crashed")
    detail = errors[-1][len("error:"):].strip() if errors else (lines[-1].strip() if lines else "")
    return f"exit {code}, {meaning}" + (f": {detail[:300]}" if detail else "")
