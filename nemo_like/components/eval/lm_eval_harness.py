"""Score a checkpoint with the real LM Evaluation Harness (``lm_eval.simple_evaluate``).

A checkpoint here is anything training writes or a user has: a run directory (its ``LATEST``
step), a step directory, its ``model/`` folder, the merged ``model/consolidated/`` folder, a bare
adapter folder, or any transformers model directory or hub id. A LoRA/DoRA step is scored from
its merged model by default and from base + adapter (lm-eval's ``peft=``) on request; both must
give the same numbers. The project's own held-out tasks live in ``nemo_like/eval_tasks``, which
is always on the include path.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from nemo_like.components.loggers.optional import import_optional

logger = logging.getLogger("nemo_like")

RESULTS_NAME = "lm_eval_results.json"
RESULTS_NAME_PEFT = "lm_eval_results_peft.json"


def default_tasks_dir() -> str:
    from nemo_like.eval_tasks import TASKS_DIR

    return TASKS_DIR


@dataclass
class EvalTarget:
    """What lm-eval loads: ``pretrained`` (a model dir or id) plus an optional ``peft`` adapter dir."""

    pretrained: str
    peft: str | None = None
    results_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def results_path(self) -> str | None:
        if self.results_dir is None:
            return None
        return os.path.join(self.results_dir, RESULTS_NAME_PEFT if self.peft else RESULTS_NAME)


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _adapter_base(adapter_dir: str, base: str | None) -> str:
    from nemo_like._transformers.embedded import resolve_pretrained_path

    if base is None:
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as handle:
            base = json.load(handle).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_dir}/adapter_config.json: no base_model_name_or_path; pass the base model")
    return resolve_pretrained_path(base)


def resolve_checkpoint(
    checkpoint: str | None, peft: str | None = None, use_adapter: bool = False, base: str | None = None
) -> EvalTarget:
    """Turn what a user points at into lm-eval's ``pretrained`` / ``peft`` pair.

    ``peft`` names an adapter explicitly (``checkpoint`` is then its base, by default the base
    the adapter records). ``use_adapter`` picks a step's adapter over its merged model.
    """
    from nemo_like._transformers.embedded import resolve_pretrained_path

    if peft is not None:
        if not _is_adapter_dir(peft):
            raise FileNotFoundError(f"--peft {peft}: no adapter_config.json there")
        pretrained = resolve_pretrained_path(checkpoint) if checkpoint else _adapter_base(peft, base)
        return EvalTarget(pretrained, peft=peft, results_dir=peft)
    if checkpoint is None:
        raise ValueError("eval: give --checkpoint (a model or checkpoint directory) or --peft (an adapter)")
    path = os.path.expanduser(checkpoint)
    if not os.path.exists(path):
        return EvalTarget(resolve_pretrained_path(checkpoint), results_dir=None)
    notes: list[str] = []
    step_dir = path
    latest = os.path.join(path, "LATEST")
    if os.path.isfile(latest):  # a run directory: its newest step
        with open(latest, encoding="utf-8") as handle:
            step_dir = os.path.join(path, handle.read().strip())
        notes.append(f"run directory: evaluating its LATEST step {step_dir}")
    model_dir = os.path.join(step_dir, "model") if os.path.isdir(os.path.join(step_dir, "model")) else step_dir
    consolidated = os.path.join(model_dir, "consolidated")
    if _is_adapter_dir(model_dir) and (use_adapter or not _is_model_dir(consolidated)):
        return EvalTarget(_adapter_base(model_dir, base), peft=model_dir, results_dir=step_dir, notes=notes)
    if use_adapter:
        raise FileNotFoundError(f"{checkpoint}: --use-adapter given but there is no adapter_config.json in {model_dir}")
    for candidate in (consolidated, model_dir):
        if _is_model_dir(candidate):
            return EvalTarget(candidate, results_dir=step_dir, notes=notes)
    raise FileNotFoundError(
        f"{checkpoint}: no transformers model here (looked for config.json in {consolidated} and {model_dir}) "
        "and no adapter_config.json"
    )


def _task_list(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if str(t).strip()]
    if not names:
        raise ValueError("eval: --tasks is empty; name one or more lm-eval tasks, e.g. nemo_like_quickstart")
    return names


def run_lm_eval(
    model: Any,
    tasks: str | list[str],
    limit: int | float | None = None,
    batch_size: int | str = 8,
    peft: str | None = None,
    tokenizer: Any = None,
    apply_chat_template: bool = True,
    include_path: str | list[str] | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    dtype: str = "auto",
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run ``lm_eval.simple_evaluate`` on ``model`` (a path/id, or a loaded transformers model).

    With a loaded model (the end of a training run) the model is scored as it is in memory;
    ``tokenizer`` is then required. Returns lm-eval's results dict (``samples`` only with
    ``log_samples``).
    """
    import_optional("lm_eval", "eval", "evaluation")
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    names = _task_list(tasks)
    paths = [default_tasks_dir()]
    for extra in [include_path] if isinstance(include_path, str) else (include_path or []):
        paths.append(os.path.abspath(os.path.expanduser(extra)))
    manager = TaskManager(include_path=paths)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"eval: unknown task(s) {', '.join(unknown)}; the project's tasks are "
                         f"{', '.join(sorted(t for t in manager.all_tasks if t.startswith('nemo_like')))} "
                         "(add --include_path DIR for your own)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(model, str):
        model_args: dict[str, Any] = {"pretrained": model, "dtype": dtype}
        if peft:
            model_args["peft"] = peft
        lm: Any = "hf"
    else:
        if tokenizer is None:
            raise ValueError("run_lm_eval: a loaded model needs its tokenizer")
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
        model_args = {}
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args or None,
        tasks=names,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        apply_chat_template=apply_chat_template,
        task_manager=manager,
        log_samples=log_samples,
        verbosity="ERROR",
    )
    if results is None:  # only non-zero ranks of a distributed lm-eval get None
        return {}
    return results


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {"exact_match,strict-match": 0.9, ...}}``: the numbers of each task, no stderr."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        out[task] = {k: float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k
                     and k != "sample_len"}
    return out


def format_table(results: dict[str, Any]) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


def write_results(results: dict[str, Any], path: str, extra: dict[str, Any] | None = None) -> str:
    """The results JSON (lm-eval's own fields plus ``summary`` and ``extra``), samples left out."""
    from lm_eval.utils import handle_non_serializable

    record = {k: v for k, v in results.items() if k != "samples"}
    record["summary"] = summarize(results)
    record.update(extra or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, default=handle_non_serializable)
    return path


def write_samples(results: dict[str, Any], path: str) -> str:
    """One line per scored document: task, doc id, prompt, raw answer, filtered answers, target and scores."""
    from lm_eval.utils import handle_non_serializable

    with open(path, "w", encoding="utf-8") as handle:
        for task, samples in results.get("samples", {}).items():
            for sample in samples:
                row = {"task": task, "doc_id": sample.get("doc_id"), "filter": sample.get("filter"),
                       "prompt": sample["arguments"][0][0] if sample.get("arguments") else None,
                       "response": sample["resps"][0][0] if sample.get("resps") else None,
                       "filtered": sample.get("filtered_resps"), "target": sample.get("target"),
                       **{m: sample[m] for m in sample.get("metrics", []) if m in sample}}
                handle.write(json.dumps(row, default=handle_non_serializable) + "\n")
    return path


def evaluate_checkpoint(
    checkpoint: str | None,
    tasks: str | list[str],
    limit: int | float | None = None,
    batch_size: int | str = 8,
    peft: str | None = None,
    use_adapter: bool = False,
    base: str | None = None,
    output: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Resolve ``checkpoint``, run lm-eval, write the results JSON beside it (or to ``output``).

    Returns ``{"target", "results", "summary", "path"}``.
    """
    target = resolve_checkpoint(checkpoint, peft=peft, use_adapter=use_adapter, base=base)
    for note in target.notes:
        logger.info(note)
    logger.info("lm-eval: pretrained=%s%s, tasks=%s, limit=%s", target.pretrained,
                f", peft={target.peft}" if target.peft else "", tasks, limit)
    results = run_lm_eval(target.pretrained, tasks, limit=limit, batch_size=batch_size, peft=target.peft, **kwargs)
    path = output
    if path is not None and (os.path.isdir(path) or not path.endswith(".json")):
        path = os.path.join(path, os.path.basename(target.results_path or RESULTS_NAME))
    path = path or target.results_path or RESULTS_NAME
    write_results(results, path, {"checkpoint": checkpoint, "pretrained": target.pretrained, "peft": target.peft,
                                  "tasks": _task_list(tasks), "limit": limit})
    samples_path = write_samples(results, path.removesuffix(".json") + ".samples.jsonl") if "samples" in results else None
    return {"target": target, "results": results, "summary": summarize(results), "path": path,
            "samples_path": samples_path}
