"""merge-lora: an adapter of ours folded into its base loads with plain transformers and gives our logits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO
from nemo_like._transformers.auto_model import NeMoAutoModelForCausalLM
from nemo_like.cli import main as cli
from nemo_like.components._peft.adapter_io import load_peft_adapter, save_peft_adapter
from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules, lora_modules
from nemo_like.components._peft.merge import merge_lora_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy two-core machine a second one spin-waits and slows each op tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def randomize_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-zero B (and a moved DoRA magnitude) so the merge has something to fold in."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora_modules(model):
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
        if layer.use_dora:
            layer.lora_magnitude.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude.shape, generator=g))


def adapted(base: str, config: PeftConfig, out: Path, quantization: dict | None = None) -> torch.nn.Module:
    """Our model with non-zero adapters, saved as an HF-PEFT adapter directory at ``out``."""
    kwargs = {}
    if quantization is not None:
        from nemo_like.components.quantization.qlora import create_bnb_config, prepare_model_for_qlora

        kwargs["quantization_config"] = create_bnb_config(quantization)
    model = NeMoAutoModelForCausalLM.from_pretrained(base, **kwargs)
    if quantization is not None:
        prepare_model_for_qlora(model)
    torch.manual_seed(0)
    apply_lora_to_linear_modules(model, config)
    randomize_adapters(model)
    save_peft_adapter(model, config, out, base_model_name_or_path=base)
    return model.eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


IDS = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "config",
    [PeftConfig(match_all_linear=True, dim=8, alpha=16),
     PeftConfig(target_modules=["q_proj", "v_proj", "*.mlp.down_proj"], dim=4, alpha=8, use_dora=True)],
    ids=["lora-all-linear", "dora"],
)
def test_cli_merge_reproduces_our_logits_with_plain_transformers(tiny_model_dir, tmp_path, config) -> None:
    ours = adapted(tiny_model_dir, config, tmp_path / "adapter")
    assert cli(["merge-lora", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]) == 0

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base_keys = set(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    assert set(merged.state_dict()) == base_keys  # the base architecture, no adapter left over
    assert getattr(merged.config, "quantization_config", None) is None
    torch.testing.assert_close(logits(merged, IDS), logits(ours, IDS), atol=1e-4, rtol=0)
    text = "What is 3 plus 4?"
    expected = AutoTokenizer.from_pretrained(tiny_model_dir)(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path / "merged")(text)["input_ids"] == expected


def test_qlora_adapter_merges_into_the_full_precision_base(tiny_model_dir, tmp_path) -> None:
    """A QLoRA adapter is folded into the dense base; it equals the dense base running that adapter."""
    pytest.importorskip("bitsandbytes")
    config = PeftConfig(match_all_linear=True, dim=4, alpha=8)
    adapted(tiny_model_dir, config, tmp_path / "adapter", quantization={"load_in_4bit": True})
    reference = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir)
    apply_lora_to_linear_modules(reference, config)
    load_peft_adapter(reference, tmp_path / "adapter")

    out = merge_lora_checkpoint(tmp_path / "adapter", output_dir=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    torch.testing.assert_close(logits(merged, IDS), logits(reference, IDS), atol=1e-4, rtol=0)


def test_example_script_takes_a_checkpoint_root_and_a_dtype(tiny_model_dir, tmp_path) -> None:
    """The checkpoint root's LATEST step is found; --dtype bfloat16 writes a bf16 model."""
    ours = adapted(tiny_model_dir, PeftConfig(match_all_linear=True, dim=4, alpha=8), tmp_path / "adapter")
    root = tmp_path / "ckpt"
    shutil.copytree(tmp_path / "adapter", root / "epoch_0_step_3" / "model")
    (root / "LATEST").write_text("epoch_0_step_3")

    cmd = [sys.executable, "examples/llm_finetune/merge_lora.py", "--adapter", str(root),
           "--output", str(tmp_path / "merged"), "--dtype", "bfloat16"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, IDS), logits(ours, IDS), atol=5e-2, rtol=5e-2)


def test_embedded_smollm2_merges_offline(tmp_path) -> None:
    """The base named in adapter_config.json is the hub id; our loader finds the embedded copy offline."""
    from nemo_like._transformers.embedded import EMBEDDED_MODEL_ID

    config = PeftConfig(target_modules=["model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"],
                        dim=4, alpha=8)
    ours = adapted(EMBEDDED_MODEL_ID, config, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == EMBEDDED_MODEL_ID

    assert cli(["merge-lora", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(merged, ids), logits(ours, ids), atol=1e-4, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template  # the instruct tokenizer came along


@pytest.mark.parametrize(
    "edit, args, words",
    [
        (None, ["--adapter", "{tmp}/nowhere"], ["error: merge-lora: no adapter_config.json"]),
        ({"base_model_name_or_path": None}, [], ["names no base_model_name_or_path", "--base"]),
        ({"use_rslora": True}, [], ["use_rslora=True", "cannot apply"]),
        ({"peft_type": "IA3"}, [], ["peft_type 'IA3' is not LORA"]),
        (None, ["--dtype", "float8"], ["Unknown torch_dtype 'float8'"]),
    ],
    ids=["missing-dir", "no-base", "rslora", "not-lora", "bad-dtype"],
)
def test_mistakes_are_one_error_line(tiny_model_dir, tmp_path, capsys, edit, args, words) -> None:
    adapted(tiny_model_dir, PeftConfig(match_all_linear=True, dim=4, alpha=8), tmp_path / "adapter")
    if edit is not None:
        path = tmp_path / "adapter" / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    argv = ["merge-lora", "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged"),
            *[a.format(tmp=tmp_path) for a in args]]
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "merged").exists()
