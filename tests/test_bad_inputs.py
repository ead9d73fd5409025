"""The bad-input matrix: every mistake a user makes in a recipe, on the command line, in the data, the model,
a checkpoint or the distributed layout exits non-zero with one line that names the culprit, writes nothing
half-done, and (for config mistakes) comes before anything heavy loads.

Config and command-line cases run in one child process that never imports torch: that the child ends with
torch unimported proves each error arrived before any model could load. Data, model and checkpoint cases run
the real entry point in this process on a tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, addition_rows, write_jsonl

DATASET = "nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"


def base_config(model_dir: str, train: str, val: str, ckpt: str) -> dict[str, Any]:
    return {
        "model": {"_target_": "nemo_like.NeMoAutoModelForCausalLM.from_pretrained",
                  "pretrained_model_name_or_path": model_dir},
        "step_scheduler": {"global_batch_size": 4, "local_batch_size": 2, "max_steps": 2, "val_every_steps": 2},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
        "dataset": {"_target_": DATASET, "path_or_dataset_id": train,
                    "column_mapping": {"context": "instruction", "question": "input", "answer": "response"}},
        "validation_dataset": {"_target_": DATASET, "path_or_dataset_id": val,
                               "column_mapping": {"context": "instruction", "question": "input", "answer": "response"}},
        "dataloader": {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader", "shuffle": False},
        "checkpoint": {"checkpoint_dir": ckpt},
        "rng": {"_target_": "nemo_like.components.training.rng.StatefulRNG", "seed": 1},
    }


def _set(cfg: dict, path: str, value: Any) -> dict:
    *parents, leaf = path.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return cfg


_DELETE = object()

# (case id, edits of the base YAML {path: value | _DELETE} or raw YAML text, extra argv, words the line must hold)
CONFIG_CASES: list[tuple[str, Any, list[str], list[str]]] = [
    ("yaml-empty", "", [], ["dataset", "required"]),
    ("yaml-syntax", "model:\n  _target_: x\n bad: [1,\n", [], ["not valid YAML", "line"]),
    ("yaml-list-top", "- 1\n- 2\n", [], ["mapping of sections"]),
    ("yaml-duplicate-key", "model: {}\nmodel: {}\n", [], ["duplicate key", "model"]),
    ("yaml-binary", b"\xff\xfe\x00model", [], ["config file"]),
    ("section-typo", {"step_schedulr": {"max_steps": 1}}, [], ["step_schedulr", "step_scheduler", ".yaml:"]),
    ("section-trainer", {"trainer": {"max_steps": 1}}, [], ["trainer", "unknown section"]),
    ("section-neftune", {"neftune": {"alpha": 5}}, [], ["neftune", "unknown section"]),
    ("section-qat", {"qat": {"enabled": True}}, [], ["qat", "unknown section"]),
    ("section-seed", {"seed": 42}, [], ["seed", "rng"]),
    ("section-benchmark", {"benchmark": {"warmup_steps": 2}}, [], ["benchmark"]),
    ("missing-dataset", {"dataset": _DELETE}, [], ["dataset", "required"]),
    ("missing-optimizer", {"optimizer": _DELETE}, [], ["optimizer", "required"]),
    ("missing-step-scheduler", {"step_scheduler": _DELETE}, [], ["step_scheduler", "required"]),
    ("missing-model", {"model": _DELETE}, [], ["model", "required"]),
    ("missing-global-batch", {"step_scheduler.global_batch_size": _DELETE}, [], ["global_batch_size", "required"]),
    ("sched-unknown-field", {"step_scheduler.max_step": 3}, [], ["step_scheduler.max_step", "max_steps", ".yaml:"]),
    ("ckpt-unknown-field", {"checkpoint.save_dir": "x"}, [], ["checkpoint.save_dir"]),
    ("ckpt-every-abc", {"step_scheduler.ckpt_every_steps": "abc"}, [], ["ckpt_every_steps", "'abc'"]),
    ("val-every-zero", {"step_scheduler.val_every_steps": 0}, [], ["val_every_steps", "0"]),
    ("batch-not-multiple", {"step_scheduler.global_batch_size": 5}, [], ["global_batch_size", "local_batch_size"]),
    ("local-batch-zero", {"step_scheduler.local_batch_size": 0}, [], ["local_batch_size"]),
    ("max-steps-negative", {"step_scheduler.max_steps": -1}, [], ["max_steps", "-1"]),
    ("epochs-float", {"step_scheduler.num_epochs": 1.5}, [], ["num_epochs", "1.5"]),
    ("optimizer-no-target", {"optimizer._target_": _DELETE}, [], ["optimizer", "_target_"]),
    ("optimizer-target-int", {"optimizer._target_": 123}, [], ["optimizer._target_", "123"]),
    ("optimizer-unknown-arg", {"optimizer.lrr": 0.1}, [], ["optimizer.lrr", "'lr'"]),
    ("optimizer-lr-word", {"optimizer.lr": "fast"}, [], ["optimizer.lr", "'fast'"]),
    ("optimizer-lr-bool", {"optimizer.lr": True}, [], ["optimizer.lr", "True"]),
    ("dataset-unknown-arg", {"dataset.colum_mapping": {}}, [], ["dataset.colum_mapping", "column_mapping"]),
    ("rng-unknown-arg", {"rng.sed": 3}, [], ["rng.sed", "seed"]),
    ("dataloader-unknown-arg", {"dataloader.shufle": True}, [], ["dataloader.shufle", "shuffle"]),
    ("lr-style-typo", {"lr_scheduler": {"lr_decay_style": "cosin"}}, [], ["lr_decay_style", "cosine"]),
    ("lr-warmup-negative", {"lr_scheduler": {"lr_warmup_steps": -5}}, [], ["lr_warmup_steps", "-5"]),
    ("clip-zero", {"clip_grad_norm": {"max_norm": 0}}, [], ["clip_grad_norm.max_norm"]),
    ("clip-word", {"clip_grad_norm": {"max_norm": "big"}}, [], ["clip_grad_norm.max_norm", "'big'"]),
    ("ckpt-format", {"checkpoint.model_save_format": "pickle"}, [], ["model_save_format", "pickle"]),
    ("ckpt-keep-zero", {"checkpoint.max_recent_checkpoints": 0}, [], ["max_recent_checkpoints"]),
    ("ckpt-dir-empty", {"checkpoint.checkpoint_dir": ""}, [], ["checkpoint_dir"]),
    ("nan-policy-word", {"nan_policy": "ignore"}, [], ["nan_policy", "ignore"]),
    ("autocast-dtype", {"autocast": {"dtype": "int8"}}, [], ["autocast.dtype", "int8"]),
    ("tp-zero", {"distributed": {"tp_size": 0}}, [], ["distributed.tp_size"]),
    ("distributed-typo", {"distributed": {"sequence_paralel": True}}, [], ["sequence_paralel", "sequence_parallel"]),
    ("backend-mpi", {"dist_env": {"backend": "mpi"}}, [], ["dist_env.backend", "mpi"]),
    ("timeout-zero", {"dist_env": {"timeout_minutes": 0}}, [], ["timeout_minutes"]),
    ("pack-negative", {"packed_sequence": {"packed_sequence_size": -1}}, [], ["packed_sequence_size"]),
    ("pack-strategy", {"packed_sequence": {"packing_strategy": "greedy"}}, [], ["packing_strategy", "greedy"]),
    ("model-path-missing", {"model.pretrained_model_name_or_path": "/nonexistent/model"}, [],
     ["model.pretrained_model_name_or_path", "/nonexistent/model"]),
    ("data-path-missing", {"dataset.path_or_dataset_id": "./missing_rows.jsonl"}, [],
     ["dataset.path_or_dataset_id", "missing_rows.jsonl"]),
    ("env-unset", {"optimizer.lr": "${oc.env:NEMO_LIKE_TEST_UNSET_VAR}"}, [], ["NEMO_LIKE_TEST_UNSET_VAR"]),
    ("callbacks-not-list", {"callbacks": "nemo_like.components.callbacks.EarlyStopping"}, [], ["callbacks", "list"]),
    ("wandb-scalar", {"wandb": 3}, [], ["wandb", "mapping"]),
    ("generation-eval-no-path", {"generation_eval": {"max_new_tokens": 8}}, [], ["path_or_dataset_id", "required"]),
    ("bool-as-word", {"contiguous_grads": "yes"}, [], ["contiguous_grads", "'yes'"]),
    ("peft-no-target", {"peft": {"dim": 8}}, [], ["peft", "_target_"]),
    ("peft-unknown-arg", {"peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig", "rank": 8}}, [],
     ["peft.rank", "dim"]),
    ("loss-unknown-arg", {"loss_fn": {"_target_": "nemo_like.components.loss.masked_ce.MaskedCrossEntropy",
                                      "ignore_idx": -1}}, [], ["loss_fn.ignore_idx", "ignore_index"]),
    ("cli-bare-lr", {}, ["--optimizer.lr"], ["optimizer.lr", "--flag"]),
    ("cli-steps-word", {}, ["--step_scheduler.max_steps", "abc"], ["step_scheduler.max_steps", "'abc'"]),
    ("cli-section-typo", {}, ["--optimzer.lr", "1e-5"], ["--optimzer.lr", "optimizer"]),
    ("cli-config-twice", {}, ["--config", "other.yaml"], ["given twice"]),
    ("cli-positional", {}, ["stray"], ["'stray'"]),
    ("cli-empty-component", {}, ["--step_scheduler..max_steps", "3"], ["empty component"]),
    ("cli-scalar-in-way", {}, ["--step_scheduler.max_steps.x", "3"], ["step_scheduler.max_steps"]),
    ("cli-peft-without-target", {}, ["--peft.dim", "8"], ["peft", "_target_"]),
    ("cli-model-path", {}, ["--model.pretrained_model_name_or_path", "/nope/model"], ["/nope/model"]),
    ("cli-unknown-field", {}, ["--checkpoint.enabledd", "false"], ["checkpoint.enabledd", "checkpoint.enabled"]),
    ("cli-nan-policy", {}, ["--nan_policy", "skp"], ["nan_policy", "skip"]),
    ("cli-config-missing", None, ["--config", "/nonexistent/recipe.yaml"], ["/nonexistent/recipe.yaml"]),
    ("gate-os-system", {"optimizer._target_": "os.system"}, [], ["optimizer._target_", "os.system"]),
    ("gate-file-target", {"dataset._target_": "evil.py:build"}, [], ["dataset._target_", "evil.py"]),
]

# Launched with `nemo-like finetune --nproc-per-node N`: the layout is checked once, before torchrun starts.
LAYOUT_CASES: list[tuple[str, dict, int, list[str]]] = [
    ("layout-batch-vs-ranks", {}, 3, ["global_batch_size", "3"]),
    ("layout-tp-vs-ranks", {"distributed": {"tp_size": 3}}, 2, ["tp_size"]),
    ("layout-dp-size", {"distributed": {"dp_size": 4}}, 2, ["dp_size"]),
    ("layout-local-batch", {"step_scheduler.local_batch_size": 4}, 2, ["global_batch_size", "local_batch_size"]),
]

_CHILD = r"""
import io, json, sys, time
from contextlib import redirect_stderr
from nemo_like.recipes.llm.run import main
from nemo_like.cli import main as cli
out = []
for case in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with redirect_stderr(err):
        rc = cli(case["argv"]) if case["cli"] else main(case["argv"])
    out.append({"id": case["id"], "rc": rc, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
                "torch_imported": "torch" in sys.modules})
print(json.dumps({"cases": out, "torch_imported": "torch" in sys.modules}))
"""


def _write_case(tmp: Path, case_id: str, spec: Any, base: dict) -> str:
    path = tmp / f"{case_id}.yaml"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    elif isinstance(spec, str):
        path.write_text(spec)
    else:
        cfg = json.loads(json.dumps(base))
        for key, value in (spec or {}).items():
            _set(cfg, key, value)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _one_line_naming(stderr: str, words: list[str]) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def config_case_results(tmp_path_factory, tiny_model_dir) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("bad_config")
    train = write_jsonl(tmp / "train.jsonl", addition_rows(8))
    val = write_jsonl(tmp / "val.jsonl", addition_rows(4))
    ckpt = tmp / "ckpt"
    base = base_config(tiny_model_dir, train, val, str(ckpt))
    cases = []
    for case_id, spec, argv, _ in CONFIG_CASES:
        path = _write_case(tmp, case_id, spec, base) if spec is not None else None
        cases.append({"id": case_id, "cli": False, "argv": (["--config", path] if path else []) + argv})
    for case_id, spec, nproc, _ in LAYOUT_CASES:
        path = _write_case(tmp, case_id, spec, base)
        cases.append({"id": case_id, "cli": True,
                      "argv": ["finetune", "-c", path, "--nproc-per-node", str(nproc)]})
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "NEMO_LIKE_ENABLE_USER_MODULES")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not ckpt.exists()  # no case wrote anything
    return {c["id"]: c for c in report["cases"]}


@pytest.mark.parametrize("case_id,words", [(c[0], c[3]) for c in CONFIG_CASES] + [(c[0], c[3]) for c in LAYOUT_CASES])
def test_config_mistake_is_one_line_before_anything_loads(config_case_results, case_id, words):
    result = config_case_results[case_id]
    assert result["rc"] == 2, result
    assert not result["torch_imported"], result  # said before anything heavy was imported
    _one_line_naming(result["stderr"], words)


def test_the_base_config_is_valid(config_case_results, tiny_model_dir, tmp_path):
    """The matrix's mistakes are mistakes: the unmodified base passes every check."""
    from nemo_like.config.loader import ConfigNode
    from nemo_like.recipes.llm.sft_config import check_sft_config

    train = write_jsonl(tmp_path / "t.jsonl", addition_rows(4))
    check_sft_config(ConfigNode(base_config(tiny_model_dir, train, train, str(tmp_path / "c"))), world_size=1)
