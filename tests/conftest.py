"""Shared fixtures: a tiny byte-level tokenizer with a ChatML template and tiny Llama checkpoints."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Token tables built by the tests go to one scratch cache for the session, not to the user's.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="nemo_like_test_tokens_")
atexit.register(shutil.rmtree, _DATASETS_CACHE, True)
os.environ["NEMO_LIKE_DATASETS_CACHE"] = _DATASETS_CACHE

REPO = Path(__file__).resolve().parents[1]


# Modules that are slow as a whole and carry no marker of their own.
SLOW_MODULES = {"test_vlm_learns_from_pixels.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: trains a real model, launches ranks or runs many processes; `make test-fast` leaves these out",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    """A 320-token byte-level BPE tokenizer; eos = pad = <|im_end|> as in SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"What is {a} plus {b}? The answer is {a + b}." for a in range(30) for b in range(30)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def tiny_llama(vocab_size: int, seed: int = 0):
    """A tiny random Llama, seeded: the same weights for the same seed."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A saved tiny Llama with its tokenizer: a local stand-in for a hub model."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    model = LlamaForCausalLM(tiny_llama_config(len(tiny_tokenizer)))
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models on a busy 2-core machine: two OpenMP threads spin against
    each other there (up to 70x slower), and a fork taken while a thread pool spins can hang the child."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fork_logged(log: Path, fn, *args) -> int:
    """Run ``fn(*args)`` in a forked child (one torch thread) whose output is appended to ``log``; returns its pid.
    The child leaves with ``os._exit``: 0 when ``fn`` returned, 1 with the traceback in ``log`` otherwise."""
    import sys
    import traceback

    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # pragma: no cover - runs in the child
        import torch

        out = open(log, "a", buffering=1)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        sys.stdout = sys.stderr = out
        torch.set_num_threads(1)
        fn(*args)
        code = 0
    except BaseException:  # noqa: BLE001 - the parent reads the log
        traceback.print_exc()
    finally:
        os._exit(code)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def addition_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = (3 * i + offset) % 29, (7 * i) % 31
        rows.append({"instruction": "Add the numbers.", "input": f"What is {a} plus {b}?", "response": str(a + b)})
    return rows


@pytest.fixture()
def addition_data(tmp_path) -> dict[str, str]:
    return {
        "train": write_jsonl(tmp_path / "data" / "train.jsonl", addition_rows(16)),
        "validation": write_jsonl(tmp_path / "data" / "validation.jsonl", addition_rows(6, offset=5)),
    }


@pytest.fixture()
def tiny_sft_env(monkeypatch, tmp_path, tiny_model_dir, addition_data) -> dict:
    """The environment tests/configs/tiny_sft.yaml reads: the tiny model, the addition data, a run directory."""
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_JSONL", addition_data["train"])
    monkeypatch.setenv("TEST_VAL_JSONL", addition_data["validation"])
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    return {"ckpt": tmp_path / "ckpt", "tmp": tmp_path, **addition_data}


def run_quickstart(ckpt_dir: Path, *overrides: str, config: str = "sft_quickstart.yaml") -> dict:
    """Run a quickstart-style recipe end to end in a subprocess; return its held-out accuracies and paths."""
    import re
    import subprocess
    import sys

    cmd = [sys.executable, "examples/llm_finetune/finetune.py", "--config",
           str(REPO / "recipes" / "smollm2_135m" / config), "--checkpoint.checkpoint_dir", str(ckpt_dir), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(re.findall(r"held-out exact match (before|after) training: ([0-9.]+)", proc.stderr))
    latest = (ckpt_dir / "LATEST").read_text().strip() if (ckpt_dir / "LATEST").exists() else None
    return {
        "before": float(found["before"]),
        "after": float(found["after"]),
        "stderr": proc.stderr,
        "checkpoint_dir": ckpt_dir,
        "last_checkpoint": (ckpt_dir / latest) if latest else None,
    }


# The held-out rows every full quickstart test judges on (the first N of data/quickstart/test.jsonl).
QUICKSTART_EVAL_ROWS = 50


@pytest.fixture(scope="session")
def quickstart_lora_run(tmp_path_factory) -> dict:
    """The whole 40-step LoRA quickstart, run once per test session and shared by the tests that judge it."""
    ckpt = tmp_path_factory.mktemp("quickstart_lora") / "ckpt"
    return run_quickstart(ckpt, "--generation_eval.limit", str(QUICKSTART_EVAL_ROWS),
                          "--validation_dataset.limit_dataset_samples", "16")


def step_records(ckpt: Path, timings: tuple[str, ...]) -> dict[int, dict]:
    """A run's ``training.jsonl`` by step, without the fields that measure time or memory (they differ between
    an interrupted run and an uninterrupted one; everything else must not)."""
    out: dict[int, dict] = {}
    for line in (Path(ckpt) / "training.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in timings:
            record.pop(key, None)
        out[record["step"]] = record
    return out


def packed_row(lengths: list[int], padding: int) -> dict[str, list[int]]:
    """A pack as ``PackedSequence`` gives it: documents of ``lengths`` (the last two tokens of each labelled),
    then a padding block of ``padding`` tokens without labels."""
    positions = [p for n in lengths for p in range(n)] + list(range(padding))
    labels = [t for n in lengths for t in [-100] * (n - 2) + [5, 6]] + [-100] * padding
    return {"input_ids": [7] * len(positions), "labels": labels, "position_ids": positions}
