"""lm-eval task YAMLs for the project's own held-out splits (pass this folder to ``--include_path``)."""

from pathlib import Path

TASKS_DIR = str(Path(__file__).resolve().parent)

__all__ = ["TASKS_DIR"]
