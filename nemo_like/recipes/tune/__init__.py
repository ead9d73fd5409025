"""``nemo-like tune``: an Optuna study whose trials are runs of another recipe (its parts: ``components/tuning``)."""
