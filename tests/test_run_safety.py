"""A run that cannot go silently wrong: non-finite losses stop it (or skip the update), secrets are never
written, and what the config holds is what the loop reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from nemo_like.components.loggers.params import flatten_params
from nemo_like.config.loader import ConfigNode, load_yaml_config
from nemo_like.config.secrets import REDACTED, is_secret_key, redact_config
from nemo_like.recipes.llm.run import EXIT_DIVERGED, main

TINY = str(REPO / "tests" / "configs" / "tiny_sft.yaml")
# lr 1e30: the first update leaves huge but finite weights; the next forward overflows to inf/NaN.
DIVERGE = ["--optimizer.lr", "1e30", "--step_scheduler.max_steps", "4", "--step_scheduler.ckpt_every_steps", "1",
           "--step_scheduler.val_every_steps", "none"]


@pytest.fixture()
def env(tiny_sft_env) -> Path:
    return tiny_sft_env["ckpt"]


def _records(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]


def _all_finite(step_dir: Path) -> bool:
    tensors = load_file(str(step_dir / "model" / "model.safetensors"))
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_a_nan_loss_stops_the_run_naming_the_step_and_latest_stays_finite(env, capsys):
    assert main(["--config", TINY, *DIVERGE]) == EXIT_DIVERGED
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step 1:" in errors[0] and "nan_policy" in errors[0], err
    latest = (env / "LATEST").read_text().strip()
    assert latest == "epoch_0_step_0"  # the step that diverged was never applied nor saved
    assert sorted(p.name for p in env.iterdir() if p.name.startswith("epoch_")) == ["epoch_0_step_0"]
    assert _all_finite(env / latest)


def test_nan_policy_skip_drops_the_updates_and_counts_them(env):
    assert main(["--config", TINY, *DIVERGE, "--nan_policy", "skip"]) == 0
    records = _records(env)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["skipped_steps"] == 3  # steps 1-3 all met the overflowed weights
    for step_dir in sorted(env.glob("epoch_*")):
        assert _all_finite(step_dir)
    # Skipped updates leave the weights exactly as step 0 left them.
    first = load_file(str(env / "epoch_0_step_0" / "model" / "model.safetensors"))
    last = load_file(str(env / (env / "LATEST").read_text().strip() / "model" / "model.safetensors"))
    assert all(torch.equal(first[k], last[k]) for k in first)


def test_secrets_are_never_written_and_come_back_from_the_environment(env, monkeypatch, capsys):
    secret = "hf_TOPSECRET_1234567890"
    monkeypatch.setenv("NL_TEST_HF_TOKEN", secret)
    args = ["--config", TINY, "--model.token", "${oc.env:NL_TEST_HF_TOKEN}", "--step_scheduler.max_steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr()
    written = [p for p in env.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".jsonl", ".txt", ".csv")]
    assert written
    for path in written + [Path("/dev/null")]:
        assert secret not in (path.read_text(errors="ignore") if path.is_file() else "")
    assert secret not in out.err and secret not in out.out
    saved = (env / "epoch_0_step_1" / "config.yaml").read_text()
    assert f"token: '{REDACTED}'" in saved
    # A resumed run reads the value again from the environment, not from the saved file.
    cfg = load_yaml_config(TINY)
    from nemo_like.config.arg_parser import apply_overrides

    apply_overrides(cfg, [("model.token", "${oc.env:NL_TEST_HF_TOKEN}")])
    assert cfg.model.token == secret and "model.token" in cfg.env_paths


@pytest.mark.parametrize("key", ["hf_token", "hub_token", "token", "aws_secret_access_key", "secret_key", "private_key",
                                 "key", "api_key", "apikey", "password", "wandb_token", "access_token", "client_secret"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["pad_token", "eos_token", "max_new_tokens", "start_of_turn_token", "monitor",
                                 "keep_in_memory", "tokenizer", "dataset_key_column", "num_label_tokens"])
def test_not_secret_keys(key):
    assert not is_secret_key(key)


def test_tracker_params_and_error_text_share_the_rule(monkeypatch):
    monkeypatch.setenv("NL_TEST_DIR", "/data/private/run7")
    cfg = ConfigNode({"wandb": {"key": "abc", "project": "p"}, "hub": {"hub_token": "t", "pad_token": "x"},
                      "data": {"path": "/data/private/run7"}})
    cfg.env_paths.add("data.path")
    flat = flatten_params(redact_config(cfg))
    assert flat == {"wandb.key": REDACTED, "wandb.project": "p", "hub.hub_token": REDACTED, "hub.pad_token": "x",
                    "data.path": REDACTED}


BUGGY_PART = '''
def build(size):
    table = {"small": 1}
    return table[size + "_typo"]  # a bug inside the part, not a mistake in the recipe
'''


def test_a_bug_inside_a_part_keeps_its_traceback_naming_what_was_built(tmp_path, monkeypatch):
    from nemo_like.config.errors import ConfigError

    monkeypatch.setenv("NEMO_LIKE_ENABLE_USER_MODULES", "1")
    (tmp_path / "parts.py").write_text(BUGGY_PART)
    node = ConfigNode({"loss_fn": {"_target_": f"{tmp_path / 'parts.py'}:build", "size": "small"}})
    with pytest.raises(KeyError) as err:
        node.loss_fn.instantiate()
    assert not isinstance(err.value, ConfigError)
    assert any("while building 'loss_fn'" in note for note in err.value.__notes__)
    # A call that does not fit the signature is still the recipe's mistake, in one line.
    node = ConfigNode({"loss_fn": {"_target_": f"{tmp_path / 'parts.py'}:build", "sise": "small"}})
    with pytest.raises(ConfigError, match=r"^loss_fn\._target_: building .*failed: missing a required argument: 'size'.*given \(sise='small'\)"):
        node.loss_fn.instantiate()


def test_an_error_that_quotes_an_environment_value_masks_it(env, monkeypatch, capsys):
    monkeypatch.setenv("NL_TEST_SECRET_STEPS", "hf_TOPSECRET_steps")
    assert main(["--config", TINY, "--step_scheduler.max_steps", "${oc.env:NL_TEST_SECRET_STEPS}"]) == 2
    err = capsys.readouterr().err
    assert "step_scheduler.max_steps" in err and "***" in err and "TOPSECRET" not in err
