"""lm-eval on the model a run just trained: in memory, or from its last checkpoint under torchrun.

The ``evaluation:`` section that asks for it is checked at set-up by the recipe's builder, so
a typo or a missing lm-eval stops the run before training, not after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from torch import nn

logger = logging.getLogger("nemo_like")


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
