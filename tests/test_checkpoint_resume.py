"""Checkpoints that resume exactly: real SIGKILLs, a crash mid-save, pruning, refusals, HF loading.

Steps are 0-based, as in the step directory names: a 12-step run takes steps 0..11; a
run killed right after step 5's checkpoint and resumed must give bit-identical records
for steps 6..11. The run: 16 rows, micro-batch 2, global batch 4 (two micro-batches per
step), so an epoch is 4 steps and step 5 sits mid-epoch; checkpoints every 3 steps and
at each epoch end (2, 3, 5, 7, 8, 11); validation every 2 steps (it draws from the RNG
too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from unittest import mock

import pytest
import torch

import crash_hooks
from conftest import REPO, addition_rows, tiny_llama_config, write_jsonl
from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointError, CheckpointingConfig
from nemo_like.config.arg_parser import parse_args_and_load_config
from nemo_like.recipes.llm.run import main
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
RUN = ["--config", TINY, "--step_scheduler.max_steps", "12", "--step_scheduler.ckpt_every_steps", "3",
       "--dataloader.shuffle", "true"]
LORA = ["--peft._target_", "nemo_like.components._peft.lora.PeftConfig", "--peft.match_all_linear", "true",
        "--peft.dim", "4", "--peft.dropout", "0.1"]
COMPARED = ("loss", "grad_norm", "lr", "num_label_tokens", "epoch")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    data = tmp_path_factory.mktemp("resume_data")
    return {
        "TEST_MODEL_DIR": tiny_model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(data / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(data / "validation.jsonl", addition_rows(6, offset=5)),
        "OMP_NUM_THREADS": "1",
    }


def _env(paths: dict[str, str], ckpt: Path, **extra: str) -> dict[str, str]:
    return {**paths, "TEST_CKPT_DIR": str(ckpt), **extra}


def _main(paths: dict[str, str], ckpt: Path, args: list[str], **extra: str) -> int:
    with mock.patch.dict(os.environ, _env(paths, ckpt, **extra)):
        return main(args)


def _spawn(paths: dict[str, str], ckpt: Path, args: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """The recipe as a user starts it, in a process of its own (so it can be killed for real)."""
    cmd = crash_hooks.command("examples/llm_finetune/finetune.py", *args)
    out = open(log, "w")  # a file, not a pipe: orphaned data-loader workers must not hold up the test
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **_env(paths, ckpt, **extra)}, stdout=out, stderr=out)


def _records(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]


_reference: dict[tuple, list[dict]] = {}


def _reference_run(paths: dict[str, str], tmp: Path, args: list[str]) -> list[dict]:
    """The uninterrupted 12-step run, once per configuration."""
    key = tuple(args)
    if key not in _reference:
        ckpt = tmp / "reference"
        assert _main(paths, ckpt, args) == 0
        _reference[key] = _records(ckpt)
        assert [r["step"] for r in _reference[key]] == list(range(12))
    return _reference[key]


def _assert_same_steps(got: list[dict], want: list[dict], steps: range) -> None:
    by_step = {r["step"]: r for r in got}
    for step in steps:
        for field in COMPARED:
            assert by_step[step][field] == want[step][field], (step, field, by_step[step][field], want[step][field])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_sigkill_after_a_checkpoint_then_resume_continues_the_exact_loss_curve(paths, tmp_path, capsys, method, workers):
    args = RUN + ["--dataloader.num_workers", str(workers)] + (LORA if method == "lora" else [])
    ckpt = tmp_path / "killed"
    proc = _spawn(paths, ckpt, args, tmp_path / "killed.log", NEMO_LIKE_TEST_KILL_AFTER_STEP="5")
    reference = _reference_run(paths, tmp_path, args)  # runs while the child trains
    assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert (ckpt / "LATEST").read_text() == "epoch_1_step_5"
    assert [r["step"] for r in _records(ckpt)] == list(range(6))

    assert _main(paths, ckpt, args) == 0
    assert f"resumed from {ckpt / 'epoch_1_step_5'}" in capsys.readouterr().err
    records = _records(ckpt)
    assert [r["step"] for r in records] == list(range(12))  # the resumed run appends steps 6..11
    _assert_same_steps(records, reference, range(12))
    assert (ckpt / "LATEST").read_text() == "epoch_2_step_11"
    assert (ckpt / (ckpt / "LOWEST_VAL").read_text() / "losses.json").exists()
    if method == "lora":
        assert (ckpt / "epoch_2_step_11" / "model" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_latest_on_the_previous_checkpoint(paths, tmp_path, capsys):
    ckpt = tmp_path / "stalled"
    args = RUN
    cmd = crash_hooks.command("examples/llm_finetune/finetune.py", *args)
    env = {**os.environ, **_env(paths, ckpt, NEMO_LIKE_TEST_STALL_SAVE="8")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)  # a child that never reaches the hook must not hang the suite
    watchdog.start()
    reference = _reference_run(paths, tmp_path, args)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("test hook: stalling the save of step 8"):
            break
    proc.kill()  # SIGKILL, mid-save
    watchdog.cancel()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert seen and seen[-1].startswith("test hook"), "".join(seen[-30:])
    partial = ckpt / ".tmp_epoch_2_step_8"
    assert (partial / "model").is_dir() and not (partial / "step_scheduler.pt").exists()
    assert not (ckpt / "epoch_2_step_8").exists()
    assert (ckpt / "LATEST").read_text() == "epoch_1_step_7"  # the epoch-end checkpoint before it

    assert _main(paths, ckpt, args) == 0
    err = capsys.readouterr().err
    assert "removed .tmp_epoch_2_step_8" in err and f"resumed from {ckpt / 'epoch_1_step_7'}" in err
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".tmp_")]
    records = _records(ckpt)
    assert [r["step"] for r in records] == list(range(12))  # step 8's record from the killed run was dropped
    _assert_same_steps(records, reference, range(12))


@pytest.mark.parametrize("signum, save_format", [(signal.SIGTERM, "safetensors"), (signal.SIGINT, "torch_save")])
def test_sigterm_or_sigint_finishes_the_step_saves_and_exits_128_plus_signal_saying_how_to_resume(
        paths, tmp_path, capsys, signum, save_format):
    ckpt = tmp_path / "signalled"
    args = RUN + ["--checkpoint.model_save_format", save_format]
    original = TrainFinetuneRecipeForNextTokenPrediction._run_train_optim_step

    def step_then_signal(self, batches):
        metrics = original(self, batches)
        if self.step_scheduler.step == 4:
            signal.raise_signal(signum)  # arrives mid-step, as from a scheduler or Ctrl-C
        return metrics

    previous = signal.getsignal(signum)
    with mock.patch.object(TrainFinetuneRecipeForNextTokenPrediction, "_run_train_optim_step", step_then_signal):
        assert _main(paths, ckpt, args) == 128 + signum  # 143 / 130: a scheduler sees a preempted job, not a finished one
    assert signal.getsignal(signum) is previous  # the recipe gives the handlers back
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received" in err
    assert "To resume, run the same command again" in err and str(ckpt / "epoch_1_step_4") in err
    assert (ckpt / "LATEST").read_text() == "epoch_1_step_4"
    assert [r["step"] for r in _records(ckpt)] == list(range(5))
    assert (ckpt / "epoch_1_step_4" / "model" / ("model.pt" if save_format == "torch_save" else "model.safetensors")).exists()

    assert _main(paths, ckpt, args) == 0
    _assert_same_steps(_records(ckpt), _reference_run(paths, tmp_path, RUN), range(12))


def test_max_recent_checkpoints_keeps_the_newest_two_and_the_lowest_validation_loss(tmp_path):
    ckpt = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path), save_consolidated=False,
                                            max_recent_checkpoints=2))
    model = torch.nn.Linear(2, 2)
    for step, val in enumerate([3.0, 1.0, 2.0, 2.5, 2.7]):
        ckpt.save(0, step, {"model": model}, val_loss=val)
    assert ckpt.step_dirs() == ["epoch_0_step_1", "epoch_0_step_3", "epoch_0_step_4"]
    assert (tmp_path / "LATEST").read_text() == "epoch_0_step_4"
    assert (tmp_path / "LOWEST_VAL").read_text() == "epoch_0_step_1"
    ckpt.save(0, 5, {"model": model}, val_loss=0.5)  # a new best: the old one is no longer kept
    assert ckpt.step_dirs() == ["epoch_0_step_4", "epoch_0_step_5"]
    assert (tmp_path / "LOWEST_VAL").read_text() == "epoch_0_step_5"


def test_max_recent_checkpoints_in_a_run(paths, tmp_path):
    ckpt = tmp_path / "pruned"
    assert _main(paths, ckpt, RUN + ["--checkpoint.max_recent_checkpoints", "2"]) == 0
    kept = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert {"epoch_2_step_8", "epoch_2_step_11", (ckpt / "LOWEST_VAL").read_text()} == set(kept)


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """Another model: same family, hidden size 32 instead of 64."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(len(tiny_tokenizer))
    config.hidden_size, config.intermediate_size = 32, 64
    path = tmp_path_factory.mktemp("other_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "first, then, expected",
    [
        ([], ["other-model"], ["was written for another model", "of another shape", "model.embed_tokens.weight"]),
        ([], LORA, ["holds full model weights", "LoRA adapter"]),
        (LORA, ["--peft._target_", LORA[1], "--peft.match_all_linear", "true", "--peft.dim", "8"],
         ["was written for another model", "has shape [4, 64] for a parameter of shape [8, 64]"]),
    ],
    ids=["other-shapes", "full-into-lora", "other-lora-rank"],
)
def test_a_checkpoint_of_another_model_is_refused_in_one_line(paths, wider_model_dir, tmp_path, capsys, first, then, expected):
    ckpt = tmp_path / "first"
    assert _main(paths, ckpt, RUN[:2] + ["--step_scheduler.max_steps", "2"] + first) == 0
    before = (ckpt / "training.jsonl").read_text()
    capsys.readouterr()
    second = dict(paths, TEST_MODEL_DIR=wider_model_dir) if then == ["other-model"] else paths
    args = RUN[:2] + ([] if then == ["other-model"] else then)
    assert _main(second, ckpt, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checkpoint.restore_from: ") and "Traceback" not in "\n".join(err)
    assert "--checkpoint.restore_from none" in err[-1]
    for word in expected:
        assert word in err[-1], (word, err[-1])
    assert (ckpt / "training.jsonl").read_text() == before
    assert (ckpt / "LATEST").read_text() == "epoch_0_step_1"


def test_refusal_comes_before_anything_is_loaded(paths, wider_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "ckpt"
    assert _main(paths, ckpt, RUN[:2] + ["--step_scheduler.max_steps", "1"]) == 0
    other = AutoModelForCausalLM.from_pretrained(wider_model_dir)
    optimizer = torch.optim.AdamW(other.parameters())
    before = {k: v.clone() for k, v in other.state_dict().items()}
    checkpointer = Checkpointer(CheckpointingConfig(checkpoint_dir=str(ckpt)))
    with pytest.raises(CheckpointError, match="another model"):
        checkpointer.load(checkpointer.latest(), {"model": other, "optim": optimizer})
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert not optimizer.state


def _trained_recipe(paths: dict[str, str], ckpt: Path, extra: list[str]) -> TrainFinetuneRecipeForNextTokenPrediction:
    with mock.patch.dict(os.environ, _env(paths, ckpt)):
        cfg = parse_args_and_load_config(RUN[:2] + ["--step_scheduler.max_steps", "3"] + extra)
        recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
        recipe.setup()
        recipe.run_train_validation_loop()
    recipe.model.eval()
    return recipe


def _sample_batch(recipe: TrainFinetuneRecipeForNextTokenPrediction) -> dict[str, torch.Tensor]:
    batch = recipe.dataloader.collate_fn([recipe.dataset[i] for i in range(4)])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_consolidated_directory_loads_with_plain_transformers_and_matches_the_model(paths, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = _trained_recipe(paths, tmp_path / "full", [])
    consolidated = Path(recipe.checkpointer.latest()) / "model" / "consolidated"
    loaded = AutoModelForCausalLM.from_pretrained(consolidated, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(consolidated)
    assert tokenizer("What is 2 plus 3?").input_ids == recipe.tokenizer("What is 2 plus 3?").input_ids
    batch = _sample_batch(recipe)
    base = AutoModelForCausalLM.from_pretrained(paths["TEST_MODEL_DIR"], dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (loaded(**batch).logits - recipe.model(**batch).logits).abs().max().item()
        assert (base(**batch).logits - loaded(**batch).logits).abs().max().item() > 1e-3  # it did train
    assert diff <= 1e-5, diff


def test_adapter_loads_with_plain_peft_and_matches_the_model(paths, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = _trained_recipe(paths, tmp_path / "lora", LORA)
    adapter = Path(recipe.checkpointer.latest()) / "model"
    base = AutoModelForCausalLM.from_pretrained(paths["TEST_MODEL_DIR"], dtype=torch.float32).eval()
    batch = _sample_batch(recipe)
    with torch.no_grad():
        base_logits = base(**batch).logits
        loaded = PeftModel.from_pretrained(base, adapter).eval()  # adapts `base` in place
        diff = (loaded(**batch).logits - recipe.model(**batch).logits).abs().max().item()
        untrained = (base_logits - loaded(**batch).logits).abs().max().item()
    assert diff <= 1e-5, diff
    assert untrained > 1e-3  # the adapter is not a no-op
