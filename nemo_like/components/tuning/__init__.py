"""Hyperparameter search over recipes (``nemo-like tune``): each module is imported where it is used,
so importing this package loads neither Optuna nor torch."""
