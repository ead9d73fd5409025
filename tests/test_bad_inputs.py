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

from conftest import REPO, addition_rows, write_jsonl

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
    ("section-neftune", {"neftune": {"alpha": 5}}, [], ["neftune.alpha", "unknown field", "noise_alpha"]),
    ("section-qat", {"qat": {"enabled": True}}, [], ["qat.qat_config", "required"]),
    ("section-seed", {"seed": 42, "rng": {"_target_": "nemo_like.components.training.rng.StatefulRNG", "seed": 7}},
     [], ["seed", "rng"]),
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


# --------------------------------------------------------------------------- data, model, checkpoint
CHAT = "nemo_like.components.datasets.llm.chat_dataset.ChatDataset"


def _run(tmp: Path, base: dict, edits: dict, argv: list[str], capsys) -> tuple[int, str]:
    from nemo_like.recipes.llm.run import main

    cfg = json.loads(json.dumps(base))
    for key, value in edits.items():
        _set(cfg, key, value)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    rc = main(["--config", str(path), *argv])
    return rc, capsys.readouterr().err


def _nothing_half_written(ckpt: Path, steps_before: list[str]) -> None:
    if ckpt.exists():
        names = sorted(p.name for p in ckpt.iterdir())
        assert not [n for n in names if n.startswith(".tmp")], names
        assert sorted(n for n in names if n.startswith("epoch_")) == steps_before, names


def _data_cases(tmp: Path) -> dict[str, tuple[dict, list[str]]]:
    """Each case's edits of the base recipe and the words its one line must hold."""
    rows = addition_rows(6)
    good = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp / "latin1.jsonl").write_bytes((good.splitlines()[0] + "\n" + good.splitlines()[1] + "\n").encode()
                                       + '{"instruction": "caf\xe9", "input": "x", "response": "1"}\n'.encode("latin-1"))
    (tmp / "malformed.jsonl").write_text(good.splitlines()[0] + "\n{not json\n")
    (tmp / "no_column.jsonl").write_text(json.dumps({"instruction": "a", "input": "b"}) + "\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "array.json").write_text(json.dumps([1, 2, 3]))
    (tmp / "a_directory.jsonl").mkdir(exist_ok=True)
    long_row = {"instruction": "Add.", "input": " ".join(str(i % 10) for i in range(1500)), "response": "7"}
    (tmp / "too_long.jsonl").write_text(good + json.dumps(long_row) + "\n")
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}]
    (tmp / "chat_no_content.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    bad_role = [{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    (tmp / "chat_bad_role.jsonl").write_text(json.dumps(bad_role[0]) + "\n")
    chat_ds = {"_target_": CHAT, "path_or_dataset_id": None}
    return {
        "data-binary": ({"dataset.path_or_dataset_id": str(tmp / "binary.jsonl")}, ["binary.jsonl:1"]),
        "data-latin1": ({"dataset.path_or_dataset_id": str(tmp / "latin1.jsonl")}, ["latin1.jsonl:3", "UTF-8"]),
        "data-malformed-json": ({"dataset.path_or_dataset_id": str(tmp / "malformed.jsonl")}, ["malformed.jsonl:2"]),
        "data-missing-column": ({"dataset.path_or_dataset_id": str(tmp / "no_column.jsonl")},
                                ["no_column.jsonl:1", "response"]),
        "data-empty-file": ({"dataset.path_or_dataset_id": str(tmp / "empty.jsonl")}, ["empty.jsonl"]),
        "data-array-of-numbers": ({"dataset.path_or_dataset_id": str(tmp / "array.json")}, ["array.json"]),
        "data-directory": ({"dataset.path_or_dataset_id": str(tmp / "a_directory.jsonl")}, ["a_directory.jsonl"]),
        "data-row-over-context": ({"dataset.path_or_dataset_id": str(tmp / "too_long.jsonl")},
                                  ["too_long.jsonl:7", "256"]),
        "data-val-row-over-context": ({"validation_dataset.path_or_dataset_id": str(tmp / "too_long.jsonl")},
                                      ["too_long.jsonl:7", "256"]),
        "data-chat-no-content": ({"dataset": {**chat_ds, "path_or_dataset_id": str(tmp / "chat_no_content.jsonl")}},
                                 ["chat_no_content.jsonl:1", "content"]),
        "data-chat-bad-role": ({"dataset": {**chat_ds, "path_or_dataset_id": str(tmp / "chat_bad_role.jsonl")}},
                               ["chat_bad_role.jsonl:1", "wizard"]),
        "data-seq-length-too-short": ({"dataset.seq_length": 4}, ["train.jsonl:1", "seq_length"]),
        "data-pack-over-context": ({"packed_sequence": {"packed_sequence_size": 4096}}, ["packed_sequence_size", "256"]),
    }


def _model_cases(tmp: Path, model_dir: str) -> dict[str, tuple[dict, list[str]]]:
    import shutil

    def copy(name: str) -> Path:
        target = tmp / name
        if not target.exists():
            shutil.copytree(model_dir, target)
        return target

    no_config = copy("no_config")
    (no_config / "config.json").unlink(missing_ok=True)
    bad_config = copy("bad_config")
    (bad_config / "config.json").write_text("{ this is not json")
    truncated = copy("truncated_weights")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    no_tokenizer = copy("no_tokenizer")
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    path_key = "model.pretrained_model_name_or_path"
    return {
        "model-no-config": ({path_key: str(no_config)}, ["no_config"]),
        "model-bad-config-json": ({path_key: str(bad_config)}, ["bad_config"]),
        "model-truncated-weights": ({path_key: str(truncated)}, ["truncated_weights"]),
        "model-no-tokenizer": ({path_key: str(no_tokenizer)}, ["no_tokenizer", "tokenizer"]),
        "model-bad-dtype": ({"model.torch_dtype": "float33"}, ["model", "float33"]),
        "model-bad-attention": ({"model.attn_implementation": "flash_attention_9"}, ["model", "flash_attention_9"]),
        "model-target-typo": ({"model._target_": "nemo_like.NeMoAutoModelForCausalLMM.from_pretrained"},
                              ["model._target_", "NeMoAutoModelForCausalLM"]),
        "model-unknown-kwarg": ({"model.foo": 1}, ["model.foo"]),
        "model-quantized-without-peft": ({"quantization": {"load_in_4bit": True}}, ["quantization", "peft"]),
        "model-fused-ce-on-lora-head": ({"loss_fn": {"_target_": "nemo_like.components.loss.linear_ce.FusedLinearCrossEntropy"},
                                         "peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig",
                                                  "target_modules": ["lm_head"], "dim": 4}},
                                        ["loss_fn", "FusedLinearCrossEntropy"]),
    }


@pytest.fixture()
def bad_env(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", addition_rows(8))
    val = write_jsonl(tmp_path / "val.jsonl", addition_rows(4))
    ckpt = tmp_path / "ckpt"
    return tmp_path, base_config(tiny_model_dir, train, val, str(ckpt)), ckpt


def test_data_and_model_mistakes_are_one_line_and_write_nothing(bad_env, tiny_model_dir, capsys):
    tmp, base, _ = bad_env
    cases = {**_data_cases(tmp), **_model_cases(tmp, tiny_model_dir)}
    failures = []
    for case_id, (edits, words) in cases.items():
        ckpt = tmp / f"ckpt_{case_id}"  # each case its own run directory
        try:
            rc, err = _run(tmp, base, {**edits, "checkpoint.checkpoint_dir": str(ckpt)}, [], capsys)
        except Exception as exc:  # a traceback instead of a line: recorded with the rest
            failures.append(f"{case_id}: raised {type(exc).__name__}: {exc}")
            continue
        try:
            assert rc == 2, rc
            line = _one_line_naming(err, words)
            if case_id.startswith("data-"):
                assert "parameters:" not in err  # data is checked before the model loads
            _nothing_half_written(ckpt, [])
        except AssertionError as failure:
            failures.append(f"{case_id}: {failure} | {err.strip().splitlines()[-1:] if err.strip() else err!r}")
            continue
        print(f"{case_id}: {line}", file=sys.__stdout__)  # the table of messages, past the capture
    assert not failures, "\n".join(failures)


def test_checkpoint_mistakes_are_one_line_and_leave_the_checkpoints_alone(bad_env, capsys):
    from nemo_like.recipes.llm.run import main as run_main  # noqa: F401 - imported for the side effect of timing

    tmp, base, ckpt = bad_env
    rc, err = _run(tmp, base, {"checkpoint.save_consolidated": False}, [], capsys)
    assert rc == 0, err
    step = (ckpt / "LATEST").read_text().strip()
    step_dir = ckpt / step
    before = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("epoch_"))
    weights = step_dir / "model" / "model.safetensors"
    optim = next(p for p in (step_dir / "optim").rglob("*") if p.is_file())
    originals = {p: p.read_bytes() for p in (weights, optim, ckpt / "LATEST")}

    def restore() -> None:
        for p, data in originals.items():
            p.write_bytes(data)

    cases = {
        "ckpt-latest-garbage": (lambda: (ckpt / "LATEST").write_bytes(b"\x00\xff garbage \n"), {}, ["LATEST"]),
        "ckpt-latest-missing-dir": (lambda: (ckpt / "LATEST").write_text("epoch_9_step_99"), {},
                                    ["LATEST", "epoch_9_step_99"]),
        "ckpt-truncated-weights": (lambda: weights.write_bytes(originals[weights][:100]), {}, ["model.safetensors"]),
        "ckpt-truncated-optimizer": (lambda: optim.write_bytes(originals[optim][:10]), {}, [optim.name]),
        "ckpt-flipped-byte": (lambda: weights.write_bytes(originals[weights][:-1] + b"\x00"), {},
                              ["model.safetensors"]),
        "ckpt-restore-missing": (lambda: None, {"checkpoint.restore_from": "epoch_7_step_7"}, ["epoch_7_step_7"]),
        "ckpt-other-model": (lambda: None, {"model.pretrained_model_name_or_path": _other_model(tmp)}, [step]),
        "ckpt-dir-is-a-file": (lambda: None, {"checkpoint.checkpoint_dir": str(weights)}, ["model.safetensors"]),
    }
    failures = []
    for case_id, (corrupt, edits, words) in cases.items():
        corrupt()
        try:
            rc, err = _run(tmp, base, {"checkpoint.save_consolidated": False, **edits}, [], capsys)
        except Exception as exc:
            failures.append(f"{case_id}: raised {type(exc).__name__}: {exc}")
            continue
        finally:
            restore()
        try:
            assert rc == 2, rc
            line = _one_line_naming(err, words)
            _nothing_half_written(ckpt, before)
        except AssertionError as failure:
            failures.append(f"{case_id}: {failure} | {err.strip().splitlines()[-1:] if err.strip() else err!r}")
            continue
        print(f"{case_id}: {line}", file=sys.__stdout__)  # the table of messages, past the capture
    assert not failures, "\n".join(failures)


def _other_model(tmp: Path) -> str:
    """A tiny model of another shape: its checkpoint must be refused, not half-loaded."""
    import torch
    from transformers import LlamaForCausalLM

    from conftest import build_tiny_tokenizer, tiny_llama_config

    path = tmp / "other_model"
    if not path.exists():
        tokenizer = build_tiny_tokenizer()
        config = tiny_llama_config(len(tokenizer))
        config.hidden_size, config.intermediate_size = 32, 64
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return str(path)
