"""The recipe's ``evaluation:`` section: lm-eval on the model a run just trained.

Checked at set-up (``evaluation_section``) so that a typo or a missing lm-eval stops the run
before training, not after it; run at the end (``run_lm_evaluation``) on the model in
memory, or, under torchrun where the weights are sharded, on the last saved checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from torch import nn

from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

EVALUATION_KEYS = frozenset({"tasks", "limit", "batch_size", "apply_chat_template", "include_path", "num_fewshot",
                             "output", "log_samples"})


def evaluation_section(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """The validated section (None when the recipe has none); needs the ``eval`` extra."""
    from nemo_like.components.loggers.optional import import_optional

    if not section:
        return None
    unknown = sorted(set(section) - EVALUATION_KEYS)
    if unknown:
        raise ConfigError(f"evaluation.{unknown[0]}: not an evaluation key (known: {', '.join(sorted(EVALUATION_KEYS))})")
    if not section.get("tasks"):
        raise ConfigError("evaluation.tasks: required (e.g. [nemo_like_quickstart])")
    from nemo_like.config.target_gate import check_user_code

    check_user_code(section.get("include_path"), "evaluation.include_path",
                    "lm-eval imports the Python files its task YAMLs name with !function")
    import_optional("lm_eval", "eval", "evaluation")
    return section


def run_lm_evaluation(
    section: dict[str, Any],
    model: nn.Module,
    tokenizer: Any,
    run_dir: str,
    latest_dir: str | None,
    world_size: int,
    autocast: contextlib.AbstractContextManager,
) -> tuple[dict[str, Any], dict[str, float]] | None:
    """lm-eval on ``model`` (one process) or on ``latest_dir`` (several); the results and flat metrics.

    Call it on the main rank only. Returns None when there is nothing to score.
    """
    from nemo_like.components.eval.lm_eval_harness import (
        evaluate_checkpoint, format_table, run_lm_eval, summarize, write_results, write_samples,
    )

    kwargs = {k: section[k] for k in ("limit", "apply_chat_template", "include_path", "num_fewshot", "log_samples")
              if k in section}
    batch_size = section.get("batch_size", 8)
    start = time.perf_counter()
    if world_size > 1:  # the weights are sharded over ranks: score the saved merged model
        if latest_dir is None:
            logger.warning("evaluation: skipped; under torchrun it scores the last checkpoint and none was saved")
            return None
        out = evaluate_checkpoint(latest_dir, section["tasks"], batch_size=batch_size, output=section.get("output"),
                                  **kwargs)
        results, path = out["results"], out["path"]
    else:
        with autocast:
            results = run_lm_eval(model, section["tasks"], batch_size=batch_size, tokenizer=tokenizer, **kwargs)
        model.train()
        path = section.get("output") or os.path.join(latest_dir or run_dir, "lm_eval_results.json")
        write_results(results, path, {"checkpoint": latest_dir, "tasks": section["tasks"],
                                      "limit": section.get("limit")})
        if "samples" in results:
            write_samples(results, path.removesuffix(".json") + ".samples.jsonl")
    logger.info("lm-eval after training (%.1f s):\n%s\nresults: %s", time.perf_counter() - start,
                format_table(results), path)
    summary = summarize(results)
    metrics = {f"eval/{task}/{name.replace(',', '/')}": value  # "exact_match,strict-match": no commas in MLflow
               for task, values in summary.items() for name, value in values.items()}
    return summary, metrics
