"""Recipes from the internet that try to run code, write files or unpickle: each one is refused.

Every attempt aims at a marker file in tmp_path (a shell `touch`, a save to it, a model or data
directory whose Python writes it when imported, a pickle that writes it when loaded). The marker
never appears, and the refusal is one line that names the key and the target. Most attempts
build a ConfigNode in this process; a few run the real CLI. The same attempts with their opt-in
show that each opt-in does what it says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch

from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode

REPO = Path(__file__).resolve().parents[1]
OPT_INS = ("NEMO_LIKE_ENABLE_USER_MODULES", "NEMO_LIKE_ALLOW_UNSAFE_TARGETS", "NEMO_LIKE_TRUST_REMOTE_CODE",
           "NEMO_LIKE_ALLOW_PICKLE")
RUN_CMD = "transformers.testing_utils.run_command"


class _WritesMarkerWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _writer(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"


def make_bait(root: Path) -> dict[str, str]:
    """The marker, and files that write it when imported, unpickled or called."""
    marker = root / "PWNED"
    pkg = root / "evil_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(_writer(marker))
    torch.save(_WritesMarkerWhenUnpickled(marker), root / "evil.pt")
    remote = root / "remote_model"
    remote.mkdir()
    (remote / "configuration_x.py").write_text(_writer(marker) + textwrap.dedent("""
        from transformers import PretrainedConfig


        class XConfig(PretrainedConfig):
            model_type = "x_remote_gate"
    """))
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "configuration_x.XConfig",
                "AutoModelForCausalLM": "configuration_x.XConfig", "AutoTokenizer": ["configuration_x.XConfig", None]}
    (remote / "config.json").write_text(json.dumps({"model_type": "x_remote_gate", "auto_map": auto_map}))
    tokenizer_map = {"auto_map": {"AutoTokenizer": auto_map["AutoTokenizer"]}}
    (remote / "tokenizer_config.json").write_text(json.dumps(tokenizer_map))
    hub = root / "hub_repo"
    hub.mkdir()
    (hub / "hubconf.py").write_text(_writer(marker) + "def x():\n    return 1\n")
    (root / "evil_dataset.py").write_text(_writer(marker))
    (root / "user_parts.py").write_text(textwrap.dedent("""
        import pathlib


        def touch(path):
            pathlib.Path(path).write_text("ran")
            return path


        def make_rng(seed=1, marker=None):
            from nemo_like.components.training.rng import StatefulRNG

            pathlib.Path(marker).write_text("ran")
            return StatefulRNG(seed=seed, ranked=True)
    """))
    return {"M": str(marker), "PKG": str(pkg), "PICKLE": str(root / "evil.pt"), "REMOTE": str(remote),
            "HUB": str(hub), "SCRIPT": str(root / "evil_dataset.py"), "USER": str(root / "user_parts.py")}


def fill(value: Any, bait: dict[str, str]) -> Any:
    """Put the bait paths into a spec: `{M}` is the marker, `{REMOTE}` the remote-code model, ..."""
    if isinstance(value, dict):
        return {k: fill(v, bait) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, bait) for v in value]
    return value.format(**bait) if isinstance(value, str) else value


@pytest.fixture(autouse=True)
def _no_opt_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OPT_INS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def bait(tmp_path: Path) -> dict[str, str]:
    return make_bait(tmp_path)


def assert_refused(err: BaseException, key: str, target: str, marker: str) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert key in text and target in text, text
    assert not Path(marker).exists(), f"the marker was written: {text}"


# --------------------------------------------------------------------------- the matrix
@dataclass
class Attempt:
    name: str
    spec: dict[str, Any]
    key: str = "attack._target_"
    target: str | None = None  # the path named in the refusal; the spec's _target_ by default
    args: dict[str, Any] = field(default_factory=dict)


def _param() -> dict[str, Any]:
    return {"_target_": "torch.nn.Parameter", "data": {"_target_": "torch.ones", "size": [2]}}


_LAUNCH = {"_target_": "torch.distributed.launcher.api.LaunchConfig", "min_nodes": 1, "max_nodes": 1,
           "nproc_per_node": 1, "run_id": "x", "rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0",
           "max_restarts": 0}
_TOUCH = ["touch", "{M}"]

ATTEMPTS = [
    # third-party callables that run commands or code
    Attempt("run_command", {"_target_": RUN_CMD, "command": _TOUCH}),
    Attempt("run_command_module_colon_form", {"_target_": "transformers.testing_utils:run_command", "command": _TOUCH}),
    Attempt("run_command_nested_in_weight_decay", {"_target_": "torch.optim.AdamW", "params": [_param()],
            "weight_decay": {"_target_": RUN_CMD, "command": _TOUCH}}, "attack.weight_decay._target_", RUN_CMD),
    Attempt("run_command_as_worker_init_fn", {"_target_": "torch.utils.data.DataLoader", "dataset": [1, 2],
            "num_workers": 1, "worker_init_fn": RUN_CMD}, "attack.worker_init_fn", RUN_CMD),
    Attempt("exec_as_collate_fn", {"_target_": "torch.utils.data.DataLoader", "dataset": [1],
            "collate_fn": "builtins.exec"}, "attack.collate_fn", "builtins.exec"),
    Attempt("launch_agent_touch", {"_target_": "torch.distributed.launcher.api.launch_agent", "config": _LAUNCH,
            "entrypoint": "/usr/bin/touch", "args": ["{M}"]}),
    Attempt("elastic_launch", {"_target_": "torch.distributed.launcher.api.elastic_launch", "config": _LAUNCH,
            "entrypoint": "/usr/bin/touch"}),
    Attempt("direct_transformers_import", {"_target_": "transformers.utils.import_utils.direct_transformers_import",
            "path": "{PKG}"}),
    Attempt("dynamic_module_class", {"_target_": "transformers.dynamic_module_utils.get_class_from_dynamic_module",
            "class_reference": "configuration_x.XConfig", "pretrained_model_name_or_path": "{REMOTE}"}),
    Attempt("torch_hub_local_repo", {"_target_": "torch.hub.load", "repo_or_dir": "{HUB}", "model": "x",
            "source": "local", "trust_repo": True}),
    Attempt("cpp_extension_load_inline", {"_target_": "torch.utils.cpp_extension.load_inline", "name": "x",
            "cpp_sources": "int x() {{ return system(\"touch {M}\"); }}"}),
    Attempt("torch_ops_load_library", {"_target_": "torch.ops.load_library", "path": "{SCRIPT}"}),
    Attempt("torch_compile", {"_target_": "torch.compile", "model": RUN_CMD}),
    Attempt("torch_multiprocessing_spawn", {"_target_": "torch.multiprocessing.spawn", "fn": RUN_CMD}),
    Attempt("transformers_pipeline", {"_target_": "transformers.pipeline", "task": "text-generation",
            "model": "{REMOTE}", "trust_remote_code": True}),
    # unpickling
    Attempt("torch_load_pickle", {"_target_": "torch.load", "f": "{PICKLE}", "weights_only": False}),
    Attempt("torch_serialization_load", {"_target_": "torch.serialization.load", "f": "{PICKLE}",
            "weights_only": False}),
    Attempt("torch_jit_load", {"_target_": "torch.jit.load", "f": "{PICKLE}"}),
    Attempt("numpy_load_pickle", {"_target_": "numpy.load", "file": "{PICKLE}", "allow_pickle": True}),
    Attempt("weights_only_false_on_a_loader", {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "{REMOTE}", "weights_only": False}, "attack.weights_only",
            "transformers.AutoModelForCausalLM.from_pretrained"),
    # writing files
    Attempt("torch_save", {"_target_": "torch.save", "obj": [1], "f": "{M}"}),
    Attempt("safetensors_save_file", {"_target_": "safetensors.torch.save_file", "tensors": {}, "filename": "{M}"}),
    Attempt("config_to_json_file", {"_target_": "transformers.LlamaConfig.to_json_file",
            "self": {"_target_": "transformers.LlamaConfig"}, "json_file_path": "{M}"}),
    Attempt("dataset_to_json", {"_target_": "datasets.Dataset.to_json", "path_or_buf": "{M}",
            "self": {"_target_": "datasets.Dataset.from_dict", "mapping": {"a": [1]}}}),
    # remote code in a model or data directory
    *(Attempt(f"trust_remote_code_{loader.rsplit('.', 2)[-2]}", {"_target_": loader, "pretrained_model_name_or_path":
              "{REMOTE}", "trust_remote_code": True}, "attack.trust_remote_code", loader)
      for loader in ("transformers.AutoConfig.from_pretrained", "transformers.AutoModel.from_pretrained",
                     "transformers.AutoModelForCausalLM.from_pretrained", "transformers.AutoTokenizer.from_pretrained",
                     "nemo_like.NeMoAutoModelForCausalLM.from_pretrained")),
    Attempt("trust_remote_code_as_a_string", {"_target_": "transformers.AutoConfig.from_pretrained",
            "pretrained_model_name_or_path": "{REMOTE}", "trust_remote_code": "yes"}, "attack.trust_remote_code",
            "transformers.AutoConfig.from_pretrained"),
    Attempt("trust_remote_code_nested", {"_target_": "nemo_like.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "{REMOTE}", "config_kwargs": {"trust_remote_code": True}},
            "attack.config_kwargs.trust_remote_code", "nemo_like.NeMoAutoModelForCausalLM.from_pretrained"),
    Attempt("hub_kernel_attention", {"_target_": "nemo_like.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "{REMOTE}", "attn_implementation": "evil-org/kernel"},
            "attack.attn_implementation", "nemo_like.NeMoAutoModelForCausalLM.from_pretrained"),
    Attempt("hub_kernels_switch", {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "{REMOTE}", "use_kernels": True}, "attack.use_kernels",
            "transformers.AutoModelForCausalLM.from_pretrained"),
    Attempt("load_dataset_trust_remote_code", {"_target_": "datasets.load_dataset", "path": "{REMOTE}",
            "trust_remote_code": True}, "attack.trust_remote_code", "datasets.load_dataset"),
    Attempt("load_dataset_script", {"_target_": "datasets.load_dataset", "path": "{SCRIPT}"}, "attack.path",
            "datasets.load_dataset"),
    Attempt("peft_model_from_pretrained", {"_target_": "peft.PeftModel.from_pretrained", "model_id": "{REMOTE}",
            "model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}}),
    # reaching os, builtins or call builders through attributes
    Attempt("dunder_globals", {"_target_": "torch.optim.AdamW.__init__.__globals__"}),
    Attempt("dunder_class", {"_target_": "torch.nn.Linear.__class__"}),
    Attempt("torch_os_system", {"_target_": "torch.os.system", "command": "touch {M}"}),
    Attempt("transformers_utils_os_system", {"_target_": "transformers.utils.os.system", "command": "touch {M}"}),
    Attempt("os_through_our_own_module", {"_target_": "nemo_like.components.callbacks.json_metrics.os.replace",
            "src": "{PICKLE}", "dst": "{M}"}),
    Attempt("class_method_outside_the_review", {"_target_": "torch.nn.Linear.mro"}),
    Attempt("auto_class_register", {"_target_": "transformers.AutoConfig.register", "model_type": "x",
            "config": "{REMOTE}"}),
    Attempt("builtins_eval", {"_target_": "builtins.eval", "source": "open({M!r}, 'w')"}),
    Attempt("bare_eval", {"_target_": "eval", "source": "1"}),
    Attempt("functools_partial", {"_target_": "functools.partial"}),
    Attempt("operator_methodcaller", {"_target_": "operator.methodcaller", "name": "system"}),
    Attempt("os_system", {"_target_": "os.system", "command": "touch {M}"}),
    Attempt("subprocess_run", {"_target_": "subprocess.run", "args": _TOUCH}),
    Attempt("importlib_import_module", {"_target_": "importlib.import_module", "name": "evil_pkg"}),
    Attempt("user_file_without_opt_in", {"_target_": "{USER}:touch", "path": "{M}"}),
    # nemo_like's own machinery
    Attempt("cli_main", {"_target_": "nemo_like.cli.main", "argv": ["plot", "{M}"]}),
    Attempt("recipe_entry_point", {"_target_": "nemo_like.recipes.llm.run.main", "argv": ["--config", "{M}"]}),
    Attempt("checkpointer", {"_target_": "nemo_like.components.checkpoint.checkpointing.Checkpointer"}),
    Attempt("merge_lora_writer", {"_target_": "nemo_like.components._peft.merge.merge_lora_checkpoint",
            "checkpoint": "{REMOTE}", "output_dir": "{M}"}),
    Attempt("save_peft_adapter", {"_target_": "nemo_like.components._peft.adapter_io.save_peft_adapter"}),
    Attempt("fork_launcher", {"_target_": "nemo_like.components.distributed.fork_launcher.run_on_ranks"}),
    Attempt("lm_eval_writer", {"_target_": "nemo_like.components.eval.lm_eval_harness.write_results",
            "results": {}, "path": "{M}"}),
    Attempt("plot_writer", {"_target_": "nemo_like.components.plotting.loss_curves.plot_run", "run_dir": "{M}"}),
    Attempt("config_loader", {"_target_": "nemo_like.config.loader.load_yaml_config", "path": "{M}"}),
    Attempt("the_gate_itself", {"_target_": "nemo_like.config.target_gate.resolve_target", "target": RUN_CMD}),
    Attempt("import_optional", {"_target_": "nemo_like.components.loggers.optional.import_optional",
            "module": "evil_pkg", "extra": "x", "section": "x"}),
    Attempt("instantiate_dataset", {"_target_": "nemo_like.recipes.builders.data.instantiate_dataset"}),
    Attempt("embedded_model_writer", {"_target_": "nemo_like._transformers.embedded.embedded_model_dir"}),
    Attempt("nemo_like_helper_off_the_list", {"_target_": "nemo_like.components.distributed.grad_clip.clip_grad_norm"}),
]


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.name for a in ATTEMPTS])
def test_attempt_is_refused(attempt: Attempt, bait: dict[str, str]) -> None:
    spec = fill(attempt.spec, bait)
    with pytest.raises(ConfigError) as err:
        ConfigNode({"attack": spec}).attack.instantiate(**attempt.args)
    assert_refused(err.value, attempt.key, fill(attempt.target or attempt.spec["_target_"], bait), bait["M"])


def _tp_plan(custom: str) -> Callable[[], Any]:
    def call() -> Any:
        from nemo_like.components.distributed.tp_plans import get_tp_plan
        from nemo_like.recipes.builders.model import resolve_tp_plan

        return get_tp_plan(torch.nn.Linear(2, 2), False, resolve_tp_plan(custom))

    return call


def _callbacks(bait: dict[str, str]) -> Any:
    from nemo_like.recipes.builders.callbacks import build_callbacks

    return build_callbacks([RUN_CMD])


def _tracker(bait: dict[str, str]) -> Any:
    from nemo_like.recipes.builders.trackers import build_metric_loggers

    node = ConfigNode({"wandb": {"_target_": "torch.save", "obj": [1], "f": bait["M"]}})
    return build_metric_loggers(node, str(Path(bait["M"]).parent))


def _mixture_member(bait: dict[str, str]) -> Any:
    from nemo_like.recipes.builders.data import instantiate_dataset

    node = ConfigNode({"dataset": {"_target_": "nemo_like.components.datasets.mixture.make_dataset_mixture",
                                   "datasets": [{"_target_": "torch.save", "obj": [1], "f": bait["M"]}]}})
    return instantiate_dataset(node.dataset)


def _prompt_func(bait: dict[str, str]) -> Any:
    from nemo_like.components.datasets.llm.prompt_template import row_formatter
    from nemo_like.recipes.builders.data import resolve_row_functions

    return row_formatter("prompt", func=resolve_row_functions({"prompt_func": "os.system"})["prompt_func"])


OTHER_SITES = [
    ("tp_plan_print", lambda b: _tp_plan("builtins.print")(), "distributed_config.tp_plan", "builtins.print"),
    ("tp_plan_run_command", lambda b: _tp_plan(RUN_CMD)(), "distributed_config.tp_plan", RUN_CMD),
    ("callback_entry", _callbacks, "callbacks.0._target_", RUN_CMD),
    ("tracker_target", _tracker, "wandb._target_", "torch.save"),
    ("mixture_member", _mixture_member, "dataset.datasets.0._target_", "torch.save"),
    ("prompt_func", _prompt_func, "dataset.prompt_func", "os.system"),
]


@pytest.mark.parametrize("name, call, key, target", OTHER_SITES, ids=[s[0] for s in OTHER_SITES])
def test_every_other_resolving_site_goes_through_the_gate(name: str, call: Callable, key: str, target: str,
                                                           bait: dict[str, str]) -> None:
    from nemo_like.components.datasets.json_rows import DatasetError

    with pytest.raises((ConfigError, DatasetError)) as err:
        call(bait)
    assert_refused(err.value, key, target, bait["M"])


# --------------------------------------------------------------------------- with the opt-ins
def test_user_modules_run_file_targets_but_not_the_deny_list(bait: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("NEMO_LIKE_ENABLE_USER_MODULES", "1")
    for spec in ({"_target_": "torch.save", "obj": [1], "f": bait["M"]},
                 {"_target_": RUN_CMD, "command": ["touch", bait["M"]]},
                 {"_target_": "os.system", "command": f"touch {bait['M']}"},
                 {"_target_": "torch.load", "f": bait["PICKLE"], "weights_only": False}):
        with pytest.raises(ConfigError, match="NEMO_LIKE_ALLOW_UNSAFE_TARGETS") as err:
            ConfigNode({"attack": spec}).attack.instantiate()
        assert_refused(err.value, "attack._target_", spec["_target_"], bait["M"])
    assert ConfigNode({"_target_": f"{bait['USER']}:touch", "path": bait["M"]}).instantiate() == bait["M"]
    assert Path(bait["M"]).read_text() == "ran"


def test_unsafe_targets_opt_in_lifts_the_deny_list(bait: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("NEMO_LIKE_ALLOW_UNSAFE_TARGETS", "1")
    ConfigNode({"_target_": "torch.save", "obj": [1, 2], "f": bait["M"]}).instantiate()
    assert torch.load(bait["M"], weights_only=True) == [1, 2]


def test_pickle_needs_its_own_opt_in(bait: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("NEMO_LIKE_ALLOW_UNSAFE_TARGETS", "1")
    node = ConfigNode({"load": {"_target_": "torch.load", "f": bait["PICKLE"], "weights_only": False}})
    with pytest.raises(ConfigError, match="NEMO_LIKE_ALLOW_PICKLE") as err:
        node.load.instantiate()
    assert_refused(err.value, "load.weights_only", "torch.load", bait["M"])
    monkeypatch.setenv("NEMO_LIKE_ALLOW_PICKLE", "1")
    node.load.instantiate()
    assert Path(bait["M"]).exists(), "with both opt-ins the pickle is loaded (and its code runs)"


def test_trust_remote_code_opt_in_is_only_for_that_argument(bait: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("NEMO_LIKE_TRUST_REMOTE_CODE", "1")
    with pytest.raises(ConfigError, match="NEMO_LIKE_ALLOW_UNSAFE_TARGETS") as err:
        ConfigNode({"attack": {"_target_": RUN_CMD, "command": ["touch", bait["M"]]}}).attack.instantiate()
    assert_refused(err.value, "attack._target_", RUN_CMD, bait["M"])


def test_the_reviewed_tp_plan_path_still_resolves() -> None:
    from nemo_like.components.distributed.tp_plans import get_tp_plan
    from nemo_like.recipes.builders.model import resolve_tp_plan

    model = torch.nn.Module()
    model.config = SimpleNamespace(model_type="llama")
    plan = get_tp_plan(model, False, resolve_tp_plan("nemo_like.components.distributed.tp_plans.llama_tp_plan"))
    assert "model.layers.*.self_attn.q_proj" in plan and "lm_head" in plan


# --------------------------------------------------------------------------- the real CLI
_RECIPE = """
model:
  _target_: nemo_like.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: {REMOTE}
step_scheduler: {{global_batch_size: 2, local_batch_size: 2, max_steps: 1}}
optimizer: {{_target_: torch.optim.AdamW, lr: 1.0e-3}}
dataset:
  _target_: nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
  path_or_dataset_id: {DATA}
  column_mapping: {{question: input, answer: response}}
checkpoint: {{checkpoint_dir: {CKPT}}}
"""
_RNG = "rng: {{_target_: nemo_like.components.training.rng.StatefulRNG, seed: 1}}\n"
CLI_RUNS = {
    # name: (extra YAML, opt-ins, refusal key, refused target)
    "run_command": ("rng: {{_target_: " + RUN_CMD + ", command: [touch, {M}]}}\n", {}, "rng._target_", RUN_CMD),
    "torch_save": ("rng: {{_target_: torch.save, obj: 1, f: {M}}}\n", {}, "rng._target_", "torch.save"),
    "remote_tokenizer": (_RNG + "tokenizer: {{_target_: transformers.AutoTokenizer.from_pretrained, "
                         "pretrained_model_name_or_path: {REMOTE}, trust_remote_code: true}}\n", {},
                         "tokenizer.trust_remote_code", "transformers.AutoTokenizer.from_pretrained"),
    "user_file": ("rng: {{_target_: '{USER}:make_rng', seed: 1, marker: {M}}}\n", {}, "rng._target_", "make_rng"),
    "user_file_opted_in": ("rng: {{_target_: '{USER}:make_rng', seed: 1, marker: {M}}}\n",
                           {"NEMO_LIKE_ENABLE_USER_MODULES": "1"}, None, None),
}
_TRUSTED_LOAD = ("from nemo_like.config.loader import ConfigNode; import sys; "
                 "c = ConfigNode({'_target_': 'transformers.AutoConfig.from_pretrained', "
                 "'pretrained_model_name_or_path': sys.argv[1], 'trust_remote_code': True}).instantiate(); "
                 "print(type(c).__name__)")


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory: pytest.TempPathFactory):
    """Start every subprocess at once (they mostly wait on imports), collect them in the tests."""
    env = {k: v for k, v in os.environ.items() if k not in OPT_INS}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs = {}
    for name, (extra, opt_ins, _, _) in {**CLI_RUNS, "trusted_load": ("", {}, None, None)}.items():
        root = tmp_path_factory.mktemp(name)
        bait = make_bait(root)
        (root / "data.jsonl").write_text(json.dumps({"input": "a", "response": "b"}) + "\n")
        paths = {**bait, "DATA": str(root / "data.jsonl"), "CKPT": str(root / "ckpt")}
        run_env = dict(env, HF_MODULES_CACHE=str(root / "hf_modules"), **opt_ins)
        if name == "trusted_load":
            cmd = [sys.executable, "-c", _TRUSTED_LOAD, bait["REMOTE"]]
            run_env["NEMO_LIKE_TRUST_REMOTE_CODE"] = "1"
        else:
            recipe = root / "recipe.yaml"
            recipe.write_text((_RECIPE + extra).format(**paths))
            cmd = [sys.executable, "examples/llm_finetune/finetune.py", "--config", str(recipe)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=run_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs[name] = (proc, bait["M"])
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(run: tuple[subprocess.Popen, str]) -> tuple[int, str, str, bool]:
    proc, marker = run
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err, Path(marker).exists()


@pytest.mark.parametrize("name", [n for n, run in CLI_RUNS.items() if run[2]])
def test_cli_refuses(name: str, cli_runs) -> None:
    code, _, err, marker_written = _finish(cli_runs[name])
    _, _, key, target = CLI_RUNS[name]
    line = next((ln for ln in err.splitlines() if ln.startswith("error: ")), err[-2000:])
    assert code == 2 and key in line and target in line, err[-2000:]
    assert not marker_written


def test_cli_runs_a_user_file_with_the_opt_in(cli_runs) -> None:
    code, _, err, marker_written = _finish(cli_runs["user_file_opted_in"])
    assert marker_written, err[-2000:]  # the run itself stops later: the bait model has no weights


def test_trusted_remote_code_runs_with_its_opt_in(cli_runs) -> None:
    code, out, err, marker_written = _finish(cli_runs["trusted_load"])
    assert code == 0 and out.strip() == "XConfig", err[-2000:]
    assert marker_written, "the model's own configuration code ran, as trusting it means"
