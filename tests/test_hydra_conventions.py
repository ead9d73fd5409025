"""Hydra's conventions in recipes and on the command line, and the environment forms of recipes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from nemo_like.config import ConfigError, load_yaml_config, parse_args_and_load_config
from nemo_like.config.arg_parser import apply_overrides, parse_cli
from nemo_like.config.secrets import REDACTED, redact_config

LOSS = "nemo_like.components.loss.masked_ce.MaskedCrossEntropy"

BASE = """\
seed: 7
optimizer:
  lr: 1e-4
  betas: [0.9, 0.95]
  name: adam
step_scheduler:
  max_steps: 10
drop:
  old: 1
  keep: 2
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(tmp_path: Path, *argv: str, text: str = BASE):
    return parse_args_and_load_config(["--config", str(write(tmp_path, text)), *argv])


# --------------------------------------------------------------------------- overrides
def test_change_existing_key(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "optimizer.lr=1e-5")
    assert cfg.optimizer.lr == 1e-5 and isinstance(cfg.optimizer.lr, float)
    assert cfg.sources["optimizer.lr"] == "optimizer.lr="


def test_change_missing_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        cli(tmp_path, "optimizer.momentum=0.9")
    message = str(err.value)
    assert "optimizer.momentum" in message and "+optimizer.momentum" in message and "\n" not in message


def test_add_new_key(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "+new.key=1", "+optimizer.eps=1e-8")
    assert cfg.new.key == 1 and cfg.optimizer.eps == 1e-8


def test_add_existing_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'optimizer.lr' already exists.*recipe.yaml:3"):
        cli(tmp_path, "+optimizer.lr=1")


def test_force_add_sets_or_adds(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "++optimizer.lr=2e-5", "++brand.new=x")
    assert cfg.optimizer.lr == 2e-5 and cfg.brand.new == "x"


def test_delete_key(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "~drop.old")
    assert "old" not in cfg.drop and cfg.drop.keep == 2
    with pytest.raises(ConfigError, match=r"~drop.nothing: no key"):
        cli(tmp_path, "~drop.nothing")


def test_delete_only_if_equal(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "~drop.old=1")
    assert "old" not in cfg.drop
    with pytest.raises(ConfigError, match=r"~drop.old=5: not deleted.*another value"):
        cli(tmp_path, "~drop.old=5")


def test_quoted_strings_stay_strings(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "optimizer.name='1e-5'", 'step_scheduler.max_steps="none"', "optimizer.lr='a b,c'")
    assert cfg.optimizer.name == "1e-5"
    assert cfg.step_scheduler.max_steps == "none"
    assert cfg.optimizer.lr == "a b,c"


def test_lists_dicts_and_null(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "optimizer.betas=[0.8,0.99]", "++peft={dim:8,targets:[q_proj,'v_proj']}",
              "optimizer.name=null")
    assert cfg.optimizer.betas == [0.8, 0.99]
    assert cfg.peft.to_dict() == {"dim": 8, "targets": ["q_proj", "v_proj"]}
    assert cfg.optimizer.name is None


def test_typing_agrees_with_dash_dash_form() -> None:
    words = ["1e-5", "none", "None", "true", "False", "3", "-1", "[0.9,0.95]", "[q_proj, v_proj]", "inf",
             "meta-llama/Llama-3.2-1B", "torch.optim.AdamW", "0x10", "1_000", ""]
    for word in words:
        dashed = parse_cli([f"--a.b={word}"])[1][0][1]
        hydra = parse_cli([f"a.b={word}"])[1][0][1]
        assert hydra == dashed and type(hydra) is type(dashed), word


def test_sweeps_are_refused() -> None:
    for token in ("optimizer.lr=1e-5,1e-4", "optimizer.lr=choice(1,2)", "seed=range(1,4)"):
        with pytest.raises(ConfigError, match="sweeps .* not supported") as err:
            parse_cli([token])
        assert "\n" not in str(err.value)


def test_bad_override_grammar_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_cli(["optimizer.betas=[1,2"])
    assert "optimizer.betas=[1,2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="config groups"):
        parse_cli(["model@pkg=x"])
    with pytest.raises(ConfigError, match="'stray'"):
        parse_cli(["stray"])


def test_mixed_dash_and_hydra_forms_through_the_cli_entry(tmp_path: Path) -> None:
    cfg = cli(tmp_path, "--optimizer.lr", "1e-5", "step_scheduler.max_steps=2", "--seed=3", "+extra.flag=true")
    assert cfg.optimizer.lr == 1e-5
    assert cfg.step_scheduler.max_steps == 2
    assert cfg.seed == 3 and cfg.extra.flag is True


def test_override_values_may_interpolate_and_references_see_overrides(tmp_path: Path) -> None:
    text = BASE + "scheduler:\n  base_lr: ${optimizer.lr}\n"
    cfg = cli(tmp_path, "optimizer.lr=3e-5", "++scheduler.steps=${step_scheduler.max_steps}", text=text)
    assert cfg.scheduler.base_lr == 3e-5  # resolved after the override, as in Hydra
    assert cfg.scheduler.steps == 10


# --------------------------------------------------------------------------- key interpolation
def test_key_interpolation(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, BASE + """\
copy:
  lr: ${optimizer.lr}
  beta0: ${optimizer.betas[0]}
  beta1: ${optimizer.betas.1}
  seed: ${seed}
  name: run-${seed}-${optimizer.name}
  rel: ${.lr}
  up: ${..seed}
  whole: ${optimizer}
  literal: \\${optimizer.lr}
"""))
    assert cfg.copy.lr == 1e-4 and isinstance(cfg.copy.lr, float)
    assert (cfg.copy.beta0, cfg.copy.beta1) == (0.9, 0.95)
    assert cfg.copy.seed == 7 and cfg.copy.name == "run-7-adam"
    assert cfg.copy.rel == 1e-4 and cfg.copy.up == 7
    assert cfg.copy.whole.to_dict() == cfg.optimizer.to_dict() and cfg.copy.whole.node_path == "copy.whole"
    assert cfg.copy.literal == "${optimizer.lr}"


def test_nested_references_resolve_transitively(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, "a: ${b}\nb: ${c.d}\nc:\n  d: [1, 2]\n"))
    assert cfg.a == [1, 2]


def test_missing_reference_names_key_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_yaml_config(write(tmp_path, BASE + "sched:\n  lr: ${optimizer.learning_rate}\n"))
    message = str(err.value)
    assert "sched.lr" in message and "recipe.yaml:12" in message and "optimizer.learning_rate" in message
    assert "\n" not in message


def test_cycle_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a \(.*recipe.yaml:1\): interpolation '\$\{b.x\}' is circular"):
        load_yaml_config(write(tmp_path, "a: ${b.x}\nb:\n  x: ${a}\n"))


def test_other_resolvers_are_refused(tmp_path: Path) -> None:
    for text in ("a: ${oc.decode:'1'}", "a: '${oc.create:{x: 1}}'", "a: ${eval:1+1}", "a: ${oc.select:seed}"):
        with pytest.raises(ConfigError, match="is not available"):
            load_yaml_config(write(tmp_path, text + "\nseed: 1\n"))


def test_env_value_is_never_reinterpreted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_TRICKY", "${oc.decode:'1'} ${seed} \\${x}")
    cfg = load_yaml_config(write(tmp_path, "seed: 1\na: ${NL_TRICKY}\nb: pre-${seed}-${NL_TRICKY}\n"))
    assert cfg.a == "${oc.decode:'1'} ${seed} \\${x}"
    assert cfg.b == "pre-1-${oc.decode:'1'} ${seed} \\${x}"


# --------------------------------------------------------------------------- _partial_ and _args_
def test_partial_builds_a_partial(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, f"loss_fn:\n  _target_: {LOSS}\n  _partial_: true\n  ignore_index: -5\n"))
    made = cfg.loss_fn.instantiate()
    assert isinstance(made, functools.partial) and made.keywords == {"ignore_index": -5}
    loss = made()
    from nemo_like.components.loss.masked_ce import MaskedCrossEntropy

    assert isinstance(loss, MaskedCrossEntropy) and loss.ignore_index == -5


def test_args_are_positional(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, """\
layer:
  _target_: torch.nn.Linear
  _args_: [4, 2]
  bias: false
loss_fn:
  _target_: %s
  _args_: [false, -7]
""" % LOSS))
    layer = cfg.layer.instantiate()
    assert (layer.in_features, layer.out_features, layer.bias) == (4, 2, None)
    loss = cfg.loss_fn.instantiate()
    assert loss.ignore_index == -7
    assert cfg.loss_fn.instantiate(True).ignore_index == -100  # runtime positional args replace _args_, as in Hydra
    with pytest.raises(ConfigError, match="_args_: expected a list"):
        load_yaml_config(write(tmp_path, f"loss_fn:\n  _target_: {LOSS}\n  _args_: 3\n")).loss_fn.instantiate()


def test_gate_refuses_a_partial_target(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, "x:\n  _target_: os.system\n  _partial_: true\n  _args_: [echo hi]\n"))
    with pytest.raises(ConfigError, match=r"x._target_: refusing 'os.system'"):
        cfg.x.instantiate()


def test_gate_refuses_a_target_reached_by_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_EVIL_TARGET", "subprocess.run")
    cfg = load_yaml_config(write(tmp_path, """\
names:
  evil: os.system
x:
  _target_: ${names.evil}
  _args_: [echo hi]
y:
  _target_: $NL_EVIL_TARGET
  _partial_: true
"""))
    with pytest.raises(ConfigError, match=r"x._target_: refusing 'os.system'"):
        cfg.x.instantiate()
    with pytest.raises(ConfigError, match=r"y._target_: refusing 'subprocess.run'"):
        cfg.y.instantiate()


def test_partial_keeps_the_argument_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEMO_LIKE_TRUST_REMOTE_CODE", raising=False)
    target = "transformers.AutoConfig.from_pretrained"
    cfg = load_yaml_config(write(tmp_path, f"x:\n  _target_: {target}\n  _partial_: true\n  trust_remote_code: true\n"))
    with pytest.raises(ConfigError, match="x.trust_remote_code: refusing"):
        cfg.x.instantiate()
    made = load_yaml_config(write(tmp_path, f"x:\n  _target_: {target}\n  _partial_: true\n")).x.instantiate()
    assert isinstance(made, functools.partial)
    with pytest.raises(ConfigError, match="trust_remote_code=True"):
        made("some/model", trust_remote_code=True)  # the caller cannot add what the recipe could not
    positional = load_yaml_config(write(tmp_path, f"x:\n  _target_: {LOSS}\n  _partial_: true\n  _args_: [false]\n"))
    assert positional.x.instantiate()(ignore_index=3).fp32_upcast is False


def test_hydra_keys_without_support_are_refused(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, f"loss_fn:\n  _target_: {LOSS}\n  _recursive_: false\n"))
    with pytest.raises(ConfigError, match="_recursive_.*not supported"):
        cfg.loss_fn.instantiate()


# --------------------------------------------------------------------------- environment forms
def test_env_forms_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_DIR", "/data")
    monkeypatch.setenv("NL_LR", "3e-4")
    cfg = load_yaml_config(write(tmp_path, """\
a: ${NL_DIR}
b: ${NL_DIR,/other}/train.jsonl
c: $NL_DIR/x
d: ${oc.env:NL_DIR}
lr: $NL_LR
quoted: "$NL_LR"
escaped: \\$NL_DIR
"""))
    assert (cfg.a, cfg.b, cfg.c, cfg.d) == ("/data", "/data/train.jsonl", "/data/x", "/data")
    assert cfg.lr == 3e-4 and cfg.quoted == "3e-4"
    assert cfg.escaped == "$NL_DIR"
    assert {"a", "b", "c", "d", "lr", "quoted"} <= cfg.env_paths and "escaped" not in cfg.env_paths


def test_env_unset_with_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NL_NOPE", raising=False)
    cfg = load_yaml_config(write(tmp_path, "a: ${NL_NOPE,fallback}\nb: ${NL_NOPE,'x, y'}\nn: ${NL_NOPE,8}\n"
                                           "o: ${oc.env:NL_NOPE,/tmp/c}\n"))
    assert (cfg.a, cfg.b, cfg.n, cfg.o) == ("fallback", "x, y", 8, "/tmp/c")


def test_env_unset_without_default_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NL_NOPE", raising=False)
    for line in ("tok: ${NL_NOPE}", "tok: $NL_NOPE/x", "tok: ${oc.env:NL_NOPE}"):
        with pytest.raises(ConfigError) as err:
            load_yaml_config(write(tmp_path, "seed: 1\nmodel:\n  " + line + "\n"))
        message = str(err.value)
        assert "model.tok" in message and "recipe.yaml:3" in message and "NL_NOPE" in message, message
        assert "\n" not in message


def test_key_wins_over_env_for_an_undotted_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("seed", "from-env")
    cfg = load_yaml_config(write(tmp_path, "seed: 7\nrng:\n  seed: ${seed}\n  other: $seed\n"))
    assert cfg.rng.seed == 7  # an existing top-level key is a reference
    assert cfg.rng.other == "from-env"  # `$NAME` is always the environment


def test_env_values_stay_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_TOKEN", "hf_supersecretvalue")
    cfg = load_yaml_config(write(tmp_path, """\
auth:
  value: ${NL_TOKEN}
  plain: $NL_TOKEN
copy:
  again: pre-${auth.value}
  tree: ${auth}
"""))
    assert cfg.auth.value == "hf_supersecretvalue"
    saved = yaml.safe_dump(redact_config(cfg))
    assert "supersecret" not in saved
    redacted = redact_config(cfg)
    assert redacted["copy"]["again"] == REDACTED and redacted["copy"]["tree"]["value"] == REDACTED


def test_env_from_the_command_line_is_secret_and_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_LR", "2e-5")
    cfg = cli(tmp_path, "optimizer.lr=$NL_LR", "--optimizer.name", "${NL_LR}")
    assert cfg.optimizer.lr == 2e-5
    assert {"optimizer.lr", "optimizer.name"} <= cfg.env_paths
    # an override that replaces an env value clears the mark
    again = apply_overrides(cfg, [("optimizer.lr", 1e-3)])
    assert "optimizer.lr" not in again.env_paths
