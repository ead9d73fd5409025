"""Seconds from start to the error line for common recipe mistakes, as a user meets them on the command line.

    python benchmarks/config_error_latency.py [--repo PATH_TO_ANOTHER_CHECKOUT] [--rounds 3]

Each mistake is a whole `python examples/llm_finetune/finetune.py --config X` process; the median of
the rounds is printed with the error line. `--repo` runs another checkout's code (e.g. an older commit
in a git worktree) with the same interpreter, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASE = """model:
  _target_: nemo_like.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
step_scheduler:
  global_batch_size: 8
  local_batch_size: 4
  max_steps: 1
optimizer:
  _target_: torch.optim.AdamW
  lr: 1.0e-5
dataset:
  _target_: nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
  path_or_dataset_id: data/quickstart/train.jsonl
  column_mapping: {question: question, answer: answer}
checkpoint:
  checkpoint_dir: CKPT
"""

MISTAKES = {
    "section typo (step_schedulr:)": (lambda y: y.replace("step_scheduler:", "step_schedulr:"), []),
    "field typo (max_step:)": (lambda y: y.replace("max_steps:", "max_step:"), []),
    "bare --optimizer.lr": (lambda y: y, ["--optimizer.lr"]),
    "optimizer argument typo (lrr)": (lambda y: y.replace("  lr:", "  lrr:"), []),
    "batch layout (global 6, local 4)": (lambda y: y.replace("global_batch_size: 8", "global_batch_size: 6"), []),
}


def time_one(repo: Path, yaml_text: str, extra: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(yaml_text.replace("CKPT", str(Path(tmp) / "ckpt")))
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(repo))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(repo / "examples/llm_finetune/finetune.py"), "--config",
                               str(recipe), *extra], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return seconds, (lines[-1] if lines else f"exit {proc.returncode}, no output")[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, (edit, extra) in MISTAKES.items():
        runs = [time_one(args.repo, edit(BASE), extra) for _ in range(args.rounds)]
        median = statistics.median(seconds for seconds, _ in runs)
        print(f"{median:6.2f} s  {name}: {runs[-1][1]}", flush=True)


if __name__ == "__main__":
    main()
