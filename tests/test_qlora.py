"""QLoRA: the quantization section, LoRA over bitsandbytes layers, the CPU repacking trap, and real runs."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.nn.modules as bnb_modules  # noqa: E402
from transformers import BitsAndBytesConfig, LlamaForCausalLM  # noqa: E402

from conftest import REPO, addition_rows, write_jsonl  # noqa: E402
from nemo_like._transformers import auto_model  # noqa: E402
from nemo_like._transformers.auto_model import NeMoAutoModelForCausalLM  # noqa: E402
from nemo_like.components._peft.adapter_io import _adapter_params, save_peft_adapter  # noqa: E402
from nemo_like.components._peft.lora import (  # noqa: E402
    PeftConfig,
    apply_lora_to_linear_modules,
    lora_modules,
    merge_lora_weights,
)
from nemo_like.components.quantization.qlora import create_bnb_config, prepare_model_for_qlora  # noqa: E402
from nemo_like.config.loader import load_yaml_config  # noqa: E402
from nemo_like.recipes.llm.run import main  # noqa: E402
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction  # noqa: E402

QLORA_YAML = REPO / "recipes" / "smollm2_135m" / "sft_qlora.yaml"
TINY_SFT = REPO / "tests" / "configs" / "tiny_sft.yaml"
GUIDE_SECTION = {  # the guide's QLoRA section, verbatim values
    "load_in_4bit": True, "load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_quant_storage": "bfloat16",
}
FOUR_BIT = {"load_in_4bit": True, "bnb_4bit_use_double_quant": True}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy two-core machine a second one spin-waits and slows each op tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quantized(model_dir: str, section: dict | None = None) -> torch.nn.Module:
    config = create_bnb_config(section or FOUR_BIT)
    model = NeMoAutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config)
    prepare_model_for_qlora(model)
    return model


def bnb_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


@torch.no_grad()
def randomize_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora_modules(model):
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


# ---------------------------------------------------------------- the quantization section


def test_guide_section_becomes_a_bitsandbytes_config() -> None:
    cfg = create_bnb_config(GUIDE_SECTION)
    assert isinstance(cfg, BitsAndBytesConfig)
    assert cfg.load_in_4bit and not cfg.load_in_8bit and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16 and cfg.bnb_4bit_quant_storage == torch.bfloat16
    assert create_bnb_config(load_in_8bit=True).load_in_8bit


@pytest.mark.parametrize(
    "section, words",
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, "both true"),
        ({}, "set load_in_4bit: true"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, "quantization.bnb_4bit_quant_type: 'int4'"),
        ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float8"}, "quantization.bnb_4bit_compute_dtype: 'float8'"),
        ({"load_in_4bit": True, "bnb_4bit_quant_storage": "int3"}, "quantization.bnb_4bit_quant_storage"),
        ({"load_in_4bit": "yes"}, "quantization.load_in_4bit: expected true or false"),
        ({"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"}, "did you mean 'bnb_4bit_quant_type'"),
    ],
    ids=["both", "neither", "quant-type", "compute-dtype", "storage", "not-bool", "typo"],
)
def test_bad_sections_are_one_line_errors(section: dict, words: str) -> None:
    with pytest.raises(ValueError) as err:
        create_bnb_config(section)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_bitsandbytes_names_the_qlora_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'nemo_like\[qlora\]'"):
        create_bnb_config(GUIDE_SECTION)


@pytest.fixture()
def recipe_env(monkeypatch, tmp_path, tiny_model_dir):
    rows = addition_rows(16)
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_JSONL", write_jsonl(tmp_path / "train.jsonl", rows))
    monkeypatch.setenv("TEST_VAL_JSONL", write_jsonl(tmp_path / "val.jsonl", rows[:4]))
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    return tmp_path


PEFT_ARGS = ["--peft._target_", "nemo_like.components._peft.lora.PeftConfig", "--peft.match_all_linear", "True"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--quantization.load_in_4bit", "True"], ["quantization: needs a peft section"]),
        ([*PEFT_ARGS, "--quantization.load_in_4bit", "True", "--quantization.bnb_4bit_quant_type", "int4"],
         ["quantization.bnb_4bit_quant_type: 'int4'"]),
        ([*PEFT_ARGS, "--quantization.load_in_4bit", "True", "--model._target_",
          "nemo_like.NeMoAutoModelForCausalLM.from_config", "--model.config", "${oc.env:TEST_MODEL_DIR}"],
         ["quantization: model target", "does not take quantization_config", "from_pretrained"]),
    ],
    ids=["no-peft", "bad-value", "from-config-target"],
)
def test_recipe_reports_quantization_mistakes_on_one_line(recipe_env, capsys, args: list[str], words: list[str]):
    assert main(["--config", str(TINY_SFT), *args]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for word in words:
        assert word in line, (word, line)


# ---------------------------------------------------------------- the loader


def test_loader_passes_quantization_config_to_transformers(tiny_model_dir) -> None:
    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=create_bnb_config(FOUR_BIT))
    assert len(bnb_layers(model)) == 14  # 7 projections x 2 layers; lm_head stays dense
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, bnb.nn.Linear4bit)


def test_gguf_source_is_unpacked_then_quantized(tmp_path, monkeypatch, tiny_model_dir) -> None:
    """transformers refuses GGUF + a quantization config; the loader goes through dense weights."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"")
    calls = []

    def fake_dense(directory, gguf_file, dtype=torch.float32, attn_implementation="sdpa", **kwargs):
        calls.append((directory, gguf_file, kwargs))
        return LlamaForCausalLM.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(auto_model, "load_dense_gguf", fake_dense)
    model = NeMoAutoModelForCausalLM.from_pretrained(str(gguf), quantization_config=create_bnb_config(FOUR_BIT))
    assert calls and calls[0][1] == "tiny.gguf" and "quantization_config" not in calls[0][2]
    assert len(bnb_layers(model)) == 14
    assert model.name_or_path == str(gguf)


# ---------------------------------------------------------------- LoRA over bitsandbytes layers


@pytest.mark.parametrize("section", [FOUR_BIT, {"load_in_8bit": True}], ids=["4bit", "8bit"])
def test_lora_wraps_bnb_layers_and_peft_reads_the_adapter(tiny_model_dir, tmp_path, section: dict) -> None:
    from peft import PeftModel

    peft_cfg = PeftConfig(match_all_linear=True, dim=4, alpha=8)
    dense = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir)
    apply_lora_to_linear_modules(dense, peft_cfg)
    ours = quantized(tiny_model_dir, section)
    assert apply_lora_to_linear_modules(ours, peft_cfg) == 14
    assert sorted(_adapter_params(ours)) == sorted(_adapter_params(dense))  # same HF-PEFT keys as a dense base
    assert all(p.dtype == torch.float32 for n, p in ours.named_parameters() if p.requires_grad)
    randomize_adapters(ours)
    save_peft_adapter(ours, peft_cfg, tmp_path / "adapter", base_model_name_or_path=tiny_model_dir)
    assert "base_layer" not in json.dumps(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()))

    theirs = PeftModel.from_pretrained(quantized(tiny_model_dir, section), str(tmp_path / "adapter"))
    ours.eval(), theirs.eval()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_dora_and_merge_work_over_4bit_layers(tiny_model_dir) -> None:
    model = quantized(tiny_model_dir)
    apply_lora_to_linear_modules(model, PeftConfig(target_modules=["q_proj", "v_proj"], dim=4, alpha=8, use_dora=True))
    randomize_adapters(model)
    model.eval()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        merge_lora_weights(model)
        after = model(input_ids=ids).logits
    # The merged q/v layers are dense, the rest still 4-bit: same function up to fp32 rounding.
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the CPU repacking trap


@pytest.fixture()
def avx512bf16_cpu(monkeypatch) -> None:
    """Make bitsandbytes act as on a CPU with AVX512-BF16, where an eval + no_grad pass repacks 4-bit weights.

    The repacked layout and its kernel also run on CPUs without the instructions, so the
    trap is real here, not mocked: after the repack the layer's backward is wrong.
    """
    if not hasattr(bnb_modules, "has_avx512bf16"):
        pytest.skip("this bitsandbytes has no CPU inference repacking")
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def packed_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)
            and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]


def adapter_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.train()
    model(**batch).loss.backward()
    return {f"{n}.{p}": getattr(layer, p).weight.grad.clone()
            for n, layer in lora_modules(model) for p in ("lora_A", "lora_B")}


def qlora_tiny(model_dir: str, prepare: bool) -> torch.nn.Module:
    model = NeMoAutoModelForCausalLM.from_pretrained(model_dir, quantization_config=create_bnb_config(FOUR_BIT))
    if prepare:
        prepare_model_for_qlora(model)
    torch.manual_seed(1)
    apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True, dim=4, alpha=8))
    randomize_adapters(model)
    return model


def max_rel_error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(((got[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref)


@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")
def test_eval_pass_breaks_gradients_unless_prepared(tiny_model_dir, avx512bf16_cpu) -> None:
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    reference = adapter_grads(qlora_tiny(tiny_model_dir, prepare=True), batch)  # never evaluated

    for prepare in (False, True):
        model = qlora_tiny(tiny_model_dir, prepare)
        with torch.no_grad():
            model.eval()(input_ids=ids)  # a validation pass
        error = max_rel_error(adapter_grads(model, batch), reference)
        if prepare:
            assert packed_layers(model) == [] and error < 1e-6
        else:  # the trap: every layer repacked, and gradients below them go wrong
            assert len(packed_layers(model)) == 14 and error > 0.1, error


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double-quant"])
def test_prepare_undoes_a_repack_that_already_happened(tiny_model_dir, double_quant: bool) -> None:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    config = create_bnb_config(load_in_4bit=True, bnb_4bit_use_double_quant=double_quant)
    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=config)
    model.train()  # an eval-mode forward would itself repack: the reference must come from the training layout
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(3, layer.in_features)
    expected = layer(x).detach()
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    weight = layer.weight
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    assert layer.weight.quant_state.packing_format_for_cpu

    assert prepare_model_for_qlora(model) == 14
    assert not layer.weight.quant_state.packing_format_for_cpu
    x.requires_grad_(True)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Repacking stores block scales in bf16, so the round trip is close, not exact.
    torch.testing.assert_close(out.detach(), expected, atol=2e-2 * expected.abs().max().item(), rtol=0)


# ---------------------------------------------------------------- real runs through the recipe


def quickstart_data(tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """The shipped quickstart split when present, else the conftest addition rows."""
    cfg = load_yaml_config(QLORA_YAML)
    train = REPO / str(cfg.get("dataset.path_or_dataset_id"))
    val = REPO / str(cfg.get("validation_dataset.path_or_dataset_id"))
    if train.is_file() and val.is_file():
        return str(train), str(val), cfg.get("dataset.column_mapping").to_dict()
    rows = addition_rows(96)
    return (write_jsonl(tmp_path / "train.jsonl", rows[:80]), write_jsonl(tmp_path / "val.jsonl", rows[80:]),
            {"context": "instruction", "question": "input", "answer": "response"})


def qlora_recipe(model_path: str, tmp_path: Path, lr: float) -> TrainFinetuneRecipeForNextTokenPrediction:
    """The shipped sft_qlora.yaml, shrunk to 20 steps of 4 rows with a validation pass after step 10."""
    cfg = load_yaml_config(QLORA_YAML)
    train, val, mapping = quickstart_data(tmp_path)
    overrides = {
        "model.pretrained_model_name_or_path": model_path,
        "quantization.bnb_4bit_compute_dtype": "float32",  # bf16 matmuls are slow on CPUs without native bf16
        "dataset.path_or_dataset_id": train, "dataset.column_mapping": mapping, "dataset.limit_dataset_samples": 80,
        "validation_dataset.path_or_dataset_id": val, "validation_dataset.column_mapping": mapping,
        "validation_dataset.limit_dataset_samples": 4,
        "step_scheduler.global_batch_size": 4, "step_scheduler.local_batch_size": 4, "step_scheduler.max_steps": 20,
        "step_scheduler.val_every_steps": 10, "step_scheduler.ckpt_every_steps": 1000,
        "optimizer.lr": lr, "lr_scheduler.lr_warmup_steps": 2, "peft.dropout": 0.0,
        "dataloader.shuffle": False, "checkpoint.enabled": False, "checkpoint.checkpoint_dir": str(tmp_path / "ckpt"),
        "generation_eval": None, "autocast.enabled": False,
    }
    for key, value in overrides.items():
        cfg.set_by_path(key, value)
    for key in ("dataset", "validation_dataset"):
        if cfg.get(f"{key}.use_hf_chat_template", None):
            cfg.set_by_path(f"{key}.use_hf_chat_template", False)  # shorter rows keep the CPU run brief
    return TrainFinetuneRecipeForNextTokenPrediction(cfg)


def run_and_watch_gradients(recipe: TrainFinetuneRecipeForNextTokenPrediction) -> tuple[list[float], list[int], list]:
    """Run the loop; per optimizer step, note which adapter tensors received a non-zero gradient."""
    seen: list[dict[str, bool]] = []
    validated_after: list[int] = []
    clip, validate = recipe._clip_gradients, recipe._run_validation_epoch

    def note_then_clip() -> float:
        seen.append({f"{n}.{p}": bool(getattr(layer, p).weight.grad is not None
                                       and getattr(layer, p).weight.grad.ne(0).any())
                     for n, layer in lora_modules(recipe.model) for p in ("lora_A", "lora_B")})
        return clip()

    def note_validation() -> float:
        validated_after.append(len(seen))
        return validate()

    recipe._clip_gradients, recipe._run_validation_epoch = note_then_clip, note_validation
    losses = [h["loss"] for h in recipe.run_train_validation_loop()["history"]]
    return losses, validated_after, seen


def assert_trains_through_validation(recipe: TrainFinetuneRecipeForNextTokenPrediction, drop: float) -> list[float]:
    """Loss falls (last 5 steps <= ``drop`` x first 5), every adapter learns every step, validation breaks nothing."""
    losses, validated_after, seen = run_and_watch_gradients(recipe)
    assert len(losses) == 20 and validated_after[0] == 10  # a validation pass in the middle of the run
    assert sum(losses[-5:]) < drop * sum(losses[:5]), losses
    assert all(ok for k, ok in seen[0].items() if k.endswith("lora_B"))  # step 0: B = 0, so only B has a gradient
    for step in range(1, 20):
        missing = [k for k, ok in seen[step].items() if not ok]
        assert not missing, (step, missing[:5])

    assert packed_layers(recipe.model) == []  # no validation pass repacked a 4-bit weight
    # The gradients of one row are the same before and after another validation pass.
    batch = next(iter(recipe.val_dataloader))
    batch = {k: batch[k][:1] for k in ("input_ids", "attention_mask", "labels")}
    before = adapter_grads(recipe.model, batch)
    recipe._run_validation_epoch()
    assert max_rel_error(adapter_grads(recipe.model, batch), before) < 1e-6
    return losses


def test_qlora_tiny_llama_trains_through_validation(tiny_model_dir, tmp_path, avx512bf16_cpu) -> None:
    recipe = qlora_recipe(tiny_model_dir, tmp_path, lr=1e-2)
    recipe.setup()
    assert len(bnb_layers(recipe.model)) == 14 and len(list(lora_modules(recipe.model))) == 14
    assert_trains_through_validation(recipe, drop=0.99)  # a random tiny model learns slowly; the mechanics matter


@pytest.mark.slow
def test_qlora_smollm2_learns_the_quickstart_task(tmp_path, avx512bf16_cpu) -> None:
    from nemo_like._transformers.embedded import EMBEDDED_MODEL_ID

    start = time.perf_counter()
    recipe = qlora_recipe(EMBEDDED_MODEL_ID, tmp_path, lr=1e-3)
    recipe.setup()
    assert len(bnb_layers(recipe.model)) == 30 * 7
    losses = assert_trains_through_validation(recipe, drop=0.7)
    print(f"\nQLoRA SmolLM2: loss {losses[0]:.3f} -> {losses[-1]:.3f} over 20 steps, "
          f"{time.perf_counter() - start:.1f} s in all\n{[round(x, 3) for x in losses]}")
