"""Behaviour of the config system: YAML typing, env vars, CLI overrides, the target gate."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nemo_like.config import ConfigError, ConfigNode, load_yaml_config, parse_args_and_load_config
from nemo_like.config import loader, target_gate
from nemo_like.config.arg_parser import apply_overrides, parse_cli
from nemo_like.config.loader import parse_literal, resolve_target


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


RECIPE = """
step_scheduler:
  max_steps: 10
  global_batch_size: 8
optimizer:
  _target_: torch.optim.AdamW
  lr: 1e-5
  eps: 1e-8
  betas: [0.9, 0.95]
  weight_decay: 0
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  batch_size: 2
  collate_fn: torch.utils.data.default_collate
"""


# --------------------------------------------------------------------------- YAML values
def test_yaml_literals_are_typed(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, """
eps: 1e-8
small: -3.5e-4
a: none
b: None
c: null
d: True
e: false
f: "1e-8"
g: 'none'
h: hello world
i: [1e-5, none, q_proj]
path: /tmp/x.json
callbacks:
  - name: first
    every: 2
  - plain
"""))
    assert cfg.eps == 1e-08 and isinstance(cfg.eps, float)
    assert cfg.small == -3.5e-4
    assert cfg.a is None and cfg.b is None and cfg.c is None
    assert cfg.d is True and cfg.e is False
    assert cfg.f == "1e-8" and cfg.g == "none", "quoted YAML strings stay strings"
    assert cfg.h == "hello world"
    assert cfg.i == [1e-5, None, "q_proj"]
    assert cfg.path == "/tmp/x.json"
    assert isinstance(cfg.callbacks[0], ConfigNode)
    assert cfg.callbacks[0].every == 2 and cfg.callbacks[1] == "plain"
    assert cfg.callbacks[0].node_path == "callbacks.0"


def test_parse_literal_rules() -> None:
    assert parse_literal("1e-5") == 1e-5
    assert parse_literal("7") == 7
    assert parse_literal("none") is None and parse_literal("None") is None
    assert parse_literal("true") is True and parse_literal("False") is False
    assert parse_literal("[0.9,0.95]") == [0.9, 0.95]
    assert parse_literal("[q_proj, v_proj]") == ["q_proj", "v_proj"]
    assert parse_literal("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    assert parse_literal("torch.optim.AdamW") == "torch.optim.AdamW"


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NL_DATA", "/data/train.jsonl")
    monkeypatch.setenv("NL_LR", "3e-4")
    monkeypatch.delenv("NL_MISSING", raising=False)
    cfg = load_yaml_config(write(tmp_path, """
dataset:
  path: ${oc.env:NL_DATA}
  cache: ${oc.env:NL_MISSING,/tmp/cache}
  name: run-${oc.env:NL_MISSING,default}-${oc.env:NL_DATA}
optimizer:
  lr: ${oc.env:NL_LR}
"""))
    assert cfg.dataset.path == "/data/train.jsonl"
    assert cfg.dataset.cache == "/tmp/cache"
    assert cfg.dataset.name == "run-default-/data/train.jsonl"
    assert cfg.optimizer.lr == 3e-4

    with pytest.raises(ConfigError) as err:
        load_yaml_config(write(tmp_path, "model:\n  token: ${oc.env:NL_MISSING}\n", "bad.yaml"))
    assert "model.token" in str(err.value) and "NL_MISSING" in str(err.value)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_yaml_config(tmp_path / "nope.yaml")
    broken = write(tmp_path, "model:\n  a: [1, 2\nb: 3\n", "broken.yaml")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(broken)
    assert "broken.yaml" in str(err.value) and "\n" not in str(err.value)
    dup = write(tmp_path, "optimizer:\n  lr: 1\n  lr: 2\n", "dup.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_yaml_config(dup)
    merged = write(tmp_path, "base: &b {lr: 1e-5, eps: 2}\nopt:\n  <<: *b\n  eps: 1e-8\n", "m.yaml")
    assert load_yaml_config(merged).opt.to_dict() == {"lr": 1e-5, "eps": 1e-8}


# --------------------------------------------------------------------------- the node
def test_config_node_access_and_paths() -> None:
    cfg = ConfigNode({"optimizer": {"lr": 0.1, "betas": [0.9, 0.95]}, "seed": 1})
    assert cfg.optimizer.lr == 0.1
    assert cfg.get("optimizer.lr") == 0.1
    assert cfg.get("optimizer.betas.1") == 0.95
    assert cfg.get("optimizer.momentum", 0.5) == 0.5
    assert cfg.get("seed.x", "d") == "d"
    assert "optimizer" in cfg and "model" not in cfg
    assert list(cfg) == ["optimizer", "seed"]
    assert dict(cfg.items())["seed"] == 1
    assert cfg.optimizer.node_path == "optimizer"
    assert not hasattr(cfg, "model")
    with pytest.raises(AttributeError, match="did you mean 'lr'"):
        cfg.optimizer.lrr  # noqa: B018

    cfg.set_by_path("model.config.hidden_size", 64)
    assert cfg.model.config.hidden_size == 64
    assert cfg.model.config.node_path == "model.config"
    cfg.set_by_path("optimizer.betas.0", 0.8)
    assert cfg.optimizer.betas == [0.8, 0.95]
    with pytest.raises(ConfigError, match="'optimizer.lr'.*not a mapping"):
        cfg.set_by_path("optimizer.lr.x", 1)


def test_to_dict_round_trips_through_safe_dump(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, RECIPE))
    cfg.set_by_path("loss_fn.reduce_fn", torch.sum)
    cfg.set_by_path("model.torch_dtype", torch.bfloat16)
    cfg.set_by_path("model.output_dir", tmp_path)
    cfg.set_by_path("model.builder", functools.partial(torch.optim.AdamW, lr=1.0))
    plain = cfg.to_dict()
    assert plain["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert plain["loss_fn"]["reduce_fn"] == "torch.sum"
    assert plain["model"]["torch_dtype"] == "torch.bfloat16"
    assert plain["model"]["builder"] == "torch.optim.adamw.AdamW"
    text = yaml.safe_dump(plain)
    assert yaml.safe_load(text) == plain
    again = load_yaml_config(write(tmp_path, text, "saved.yaml"))
    assert again.optimizer.eps == 1e-8 and again.to_dict() == plain


# --------------------------------------------------------------------------- CLI
def test_parse_cli_forms() -> None:
    path, overrides = parse_cli([
        "--config", "r.yaml", "--optimizer.lr", "1e-5", "--optimizer.betas=[0.9,0.95]",
        "--peft", "none", "--checkpoint.enabled", "--step_scheduler.max_steps=5",
        "--model.name", "gpt2", "--loss_fn.ignore_index", "-100", "--dataloader.drop_last",
    ])
    assert path == "r.yaml"
    assert overrides == [
        ("optimizer.lr", 1e-5), ("optimizer.betas", [0.9, 0.95]), ("peft", None),
        ("checkpoint.enabled", True), ("step_scheduler.max_steps", 5), ("model.name", "gpt2"),
        ("loss_fn.ignore_index", -100), ("dataloader.drop_last", True),
    ]
    assert parse_cli(["-c", "a.yaml"])[0] == "a.yaml"
    assert parse_cli(["--config=b.yaml", "--x.y=true"]) == ("b.yaml", [("x.y", True)])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_cli(["--config", "a.yaml", "--a.b", "1", "stray"])
    with pytest.raises(ConfigError, match="--config"):
        parse_cli(["--config"])


def test_apply_overrides_creates_known_and_targeted_sections(tmp_path: Path) -> None:
    from nemo_like.recipes.llm.sft_config import SFT_SCHEMA

    cfg = load_yaml_config(write(tmp_path, RECIPE))
    apply_overrides(cfg, [
        ("optimizer.lr", 2e-4),
        ("peft.dim", 8),
        ("peft._target_", "nemo_like.config.loader.ConfigNode"),
        ("my_extras._target_", "torch.nn.Identity"),
        ("step_scheduler.val_every_steps", 3),
        ("seed", 7),
    ], known_sections=SFT_SCHEMA.override_names)
    assert cfg.optimizer.lr == 2e-4
    assert cfg.peft.to_dict() == {"dim": 8, "_target_": "nemo_like.config.loader.ConfigNode"}
    assert isinstance(cfg.my_extras.instantiate(), torch.nn.Identity)
    assert cfg.step_scheduler.val_every_steps == 3 and cfg.seed == 7


def test_apply_overrides_rejects_typos(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, RECIPE))
    with pytest.raises(ConfigError) as err:
        apply_overrides(cfg, [("optimzer.lr", 1e-5)])
    assert str(err.value).startswith("--optimzer.lr: no section 'optimzer'")
    assert "did you mean 'optimizer'?" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'step_scheduler.max_steps'"):
        apply_overrides(cfg, [("max_steps", 5)])
    with pytest.raises(ConfigError, match=r"^--optimizer\.lr\.x: .*'optimizer\.lr'.*not a mapping"):
        apply_overrides(cfg, [("optimizer.lr.x", 1)])


def test_parse_args_and_load_config(tmp_path: Path) -> None:
    recipe = write(tmp_path, RECIPE)
    cfg = parse_args_and_load_config(["--config", str(recipe), "--optimizer.lr=1e-3"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.eps == 1e-8
    cfg = parse_args_and_load_config(["--dataloader.batch_size", "4"], default_config=str(recipe))
    assert cfg.dataloader.batch_size == 4
    with pytest.raises(ConfigError, match="no config file given"):
        parse_args_and_load_config([])
    with pytest.raises(SystemExit):
        parse_args_and_load_config(["--help"])


# --------------------------------------------------------------------------- instantiate
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")
def test_instantiate_recursive_with_runtime_kwargs(tmp_path: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, RECIPE + """
model:
  _target_: torch.nn.Sequential
  _unused: 1
layers:
  _target_: torch.nn.ModuleList
  modules:
    - _target_: torch.nn.Linear
      in_features: 4
      out_features: 2
    - _target_: torch.nn.ReLU
scheduler:
  _target_: torch.optim.lr_scheduler.LambdaLR
  lr_lambda: {}
"""))
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = cfg.optimizer.instantiate(params=params, lr=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 0.5, "runtime kwargs win over the YAML"
    assert group["eps"] == 1e-8 and tuple(group["betas"]) == (0.9, 0.95)

    layers = cfg.layers.instantiate()
    assert isinstance(layers[0], torch.nn.Linear) and layers[0].in_features == 4
    assert isinstance(layers[1], torch.nn.ReLU)

    loader_ = cfg.dataloader.instantiate(dataset=[{"x": torch.ones(2)}] * 4)
    assert loader_.collate_fn is torch.utils.data.default_collate
    assert next(iter(loader_))["x"].shape == (2, 2)

    nested = ConfigNode({
        "_target_": "torch.optim.SGD",
        "params": [{"_target_": "torch.nn.Parameter", "data": {"_target_": "torch.ones", "size": [2]}}],
        "lr": 0.1,
    })
    sgd = nested.instantiate()
    assert torch.equal(sgd.param_groups[0]["params"][0].data, torch.ones(2))

    plain = ConfigNode({"_target_": "torch.nn.ModuleDict", "modules": {"a": {"_target_": "torch.nn.ReLU"}}})
    assert isinstance(plain.instantiate()["a"], torch.nn.ReLU), "target-less nodes pass as dicts"

    with pytest.raises(ConfigError, match="step_scheduler: no '_target_'"):
        cfg.step_scheduler.instantiate()


def test_bad_kwargs_name_signature_and_redact_secrets() -> None:
    cfg = ConfigNode({"optimizer": {
        "_target_": "torch.optim.AdamW", "lr": 0.1, "hf_token": "hf_verysecret", "api_key": "sk-123",
    }})
    with pytest.raises(ConfigError) as err:
        cfg.optimizer.instantiate(params=[torch.nn.Parameter(torch.zeros(1))])
    text = str(err.value)
    assert "\n" not in text
    assert "optimizer._target_" in text and "torch.optim.adamw.AdamW" in text
    assert "(params" in text and "weight_decay" in text, "the signature is shown"
    assert "hf_token='***'" in text and "api_key='***'" in text
    assert "hf_verysecret" not in text and "sk-123" not in text
    assert isinstance(err.value.__cause__, TypeError)


# --------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("target", ["os.system", "subprocess.run", "builtins.eval", "torch.os.system"])
def test_gate_refuses_modules_outside_the_allow_list(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    cfg = ConfigNode({"model": {"_target_": target, "command": "echo pwned"}})
    with pytest.raises(ConfigError) as err:
        cfg.model.instantiate()
    text = str(err.value)
    # These are on the deny list: user modules do not admit them, only the unsafe switch does.
    assert "model._target_" in text and target in text and "NEMO_LIKE_ALLOW_UNSAFE_TARGETS=1" in text
    monkeypatch.setenv(loader.USER_MODULES_ENV, "1")
    with pytest.raises(ConfigError, match="NEMO_LIKE_ALLOW_UNSAFE_TARGETS"):
        cfg.model.instantiate()


RECIPE_TARGETS = [
    "nemo_like.NeMoAutoModelForCausalLM.from_pretrained", "nemo_like.NeMoAutoModelForCausalLM.from_config",
    "nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset",
    "nemo_like.components.datasets.llm.chat_dataset.ChatDataset",
    "nemo_like.components.datasets.llm.xlam.make_xlam_dataset",
    "nemo_like.components.datasets.llm.pretrain_text_dataset.PretrainTextDataset",
    "nemo_like.components.datasets.mixture.make_dataset_mixture",
    "nemo_like.components.datasets.utils.default_collater",
    "nemo_like.components.datasets.llm.prompt_functions.alpaca_prompt",
    "nemo_like.components.loss.masked_ce.MaskedCrossEntropy",
    "nemo_like.components.loss.linear_ce.FusedLinearCrossEntropy",
    "nemo_like.components._peft.lora.PeftConfig", "nemo_like.components.distributed.config.FSDP2Config",
    "nemo_like.components.distributed.config.DDPConfig", "nemo_like.components.training.rng.StatefulRNG",
    "nemo_like.components.callbacks.EarlyStopping", "nemo_like.components.callbacks.JSONMetricsLogger",
    "nemo_like.components.loggers.wandb.WandbLogger", "nemo_like.components.distributed.tp_plans.llama_tp_plan",
    "torchdata.stateful_dataloader.StatefulDataLoader",
    "torchdata.stateful_dataloader.sampler.StatefulDistributedSampler",
    "torch.utils.data.DataLoader", "torch.utils.data.default_collate", "torch.optim.AdamW", "torch.optim.adamw.AdamW",
    "torch.optim.lr_scheduler.LambdaLR", "torch.nn.Linear", "torch.nn.Parameter", "torch.ones", "torch.bfloat16",
    "transformers.AutoModelForCausalLM.from_pretrained", "transformers.AutoTokenizer.from_pretrained",
    "transformers.AutoConfig.from_pretrained", "transformers.LlamaConfig", "transformers.BitsAndBytesConfig",
    "peft.LoraConfig", "datasets.load_dataset",
]


@pytest.mark.parametrize("target", RECIPE_TARGETS)
def test_gate_admits_the_reviewed_targets(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    assert resolve_target(target, "x._target_") is not None


@pytest.mark.parametrize("target, why", [
    ("torch.distributions.Normal", "torch admits"),  # a reviewed package, an unreviewed namespace
    ("torch.nn.Linear.mro", "torch.nn.Module subclasses"),  # reached through an admitted class
    ("peft.PeftModel.from_pretrained", "PEFT config classes"),
    ("nemo_like.components.distributed.grad_clip.clip_grad_norm", "nemo_like's component targets"),
    ("nemo_like.components.plotting.loss_curves.plot_run", "nemo_like machinery"),
])
def test_gate_admits_callables_not_packages(target: str, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    with pytest.raises(ConfigError, match=why) as err:
        resolve_target(target, "x._target_")
    assert str(err.value).startswith(f"x._target_: refusing {target!r}")


def test_gate_refuses_private_and_denied_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    for target in ("torch._C._foo", "torch.optim.AdamW.__init__", "os.__dict__"):
        with pytest.raises(ConfigError, match="private|allow-listed"):
            resolve_target(target, "model._target_")
    with pytest.raises(ConfigError, match="private component '_C'"):
        resolve_target("torch._C._foo", "model._target_")
    with pytest.raises(ConfigError, match="arbitrary code"):
        resolve_target("torch.hub.load", "model._target_")
    # A `*_fn` string goes through the same gate.
    cfg = ConfigNode({"dl": {"_target_": "torch.utils.data.DataLoader", "collate_fn": "os.system"}})
    with pytest.raises(ConfigError, match="dl.collate_fn"):
        cfg.dl.instantiate(dataset=[1])


def test_file_targets_need_the_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = write(tmp_path, "def build(scale=1):\n    return {'scale': scale}\n", "my_parts.py")
    cfg = ConfigNode({"custom": {"_target_": f"{code}:build", "scale": 3}})
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        cfg.custom.instantiate()
    assert "custom._target_" in str(err.value) and "my_parts.py:build" in str(err.value)
    assert "NEMO_LIKE_ENABLE_USER_MODULES" in str(err.value)

    monkeypatch.setenv(loader.USER_MODULES_ENV, "1")
    assert cfg.custom.instantiate() == {"scale": 3}
    with pytest.raises(ConfigError, match="did you mean .*my_parts.py:build"):
        resolve_target(f"{code}:buld", "custom._target_")


def test_allow_list_can_be_extended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    with pytest.raises(ConfigError):
        resolve_target("json.dumps")
    monkeypatch.setattr(target_gate, "ALLOWED_MODULE_PREFIXES", target_gate.ALLOWED_MODULE_PREFIXES + ("json",))
    assert resolve_target("json.dumps")([1]) == "[1]"
    # An extension trusts a package's callables, never the deny list inside it.
    monkeypatch.setattr(target_gate, "ALLOWED_MODULE_PREFIXES", ("torch",))
    assert resolve_target("torch.distributions.Normal") is torch.distributions.Normal
    with pytest.raises(ConfigError, match="NEMO_LIKE_ALLOW_UNSAFE_TARGETS"):
        resolve_target("torch.save")


def test_precheck_judges_the_path_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    target_gate.precheck_target("torch.optim.AdamW", "optimizer._target_")
    target_gate.precheck_target("nemo_like.components._peft.lora.PeftConfig", "peft._target_")
    for target, why in (("torch.save", "NEMO_LIKE_ALLOW_UNSAFE_TARGETS"), ("evil.py:build", "file target"),
                        ("nowhere_pkg.build", "not reviewed"), ("torch.nn.Linear.__class__", "private")):
        with pytest.raises(ConfigError, match=why):
            target_gate.precheck_target(target, "x._target_")
    assert "nowhere_pkg" not in sys.modules


def test_code_from_files_needs_the_user_modules_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loader.USER_MODULES_ENV, raising=False)
    why = "lm-eval imports the Python files its task YAMLs name"
    target_gate.check_user_code(None, "evaluation.include_path", why)
    with pytest.raises(ConfigError, match=r"^evaluation\.include_path: refusing .*NEMO_LIKE_ENABLE_USER_MODULES=1"):
        target_gate.check_user_code(str(tmp_path), "evaluation.include_path", why)
    monkeypatch.setenv(loader.USER_MODULES_ENV, "1")
    target_gate.check_user_code(str(tmp_path), "evaluation.include_path", why)


def test_misspelled_targets_suggest_the_nearest_name() -> None:
    cfg = ConfigNode({"optimizer": {"_target_": "torch.optim.AdamX", "lr": 1.0}})
    with pytest.raises(ConfigError) as err:
        cfg.optimizer.instantiate(params=[])
    text = str(err.value)
    assert "optimizer._target_" in text and "torch.optim.AdamX" in text
    assert "did you mean 'torch.optim.Adam" in text
    with pytest.raises(ConfigError, match="did you mean 'nemo_like.components'"):
        resolve_target("nemo_like.componnts.loss.masked_ce.MaskedCrossEntropy", "loss_fn._target_")
    with pytest.raises(ConfigError, match="did you mean 'torch'"):
        resolve_target("torhc.optim.AdamW", "optimizer._target_")

