"""QAT with torchao: fake-quantized training forward, delayed rounding, conversion of the saved model, the recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from nemo_like.recipes.llm.run import main

pytest.importorskip("torchao")

from nemo_like.components.quantization.qat import (  # noqa: E402
    FakeQuantSchedule, QATConfig, convert_qat_model, prepare_qat_model, set_fake_quant,
)

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
VOCAB = 320
GROUP = 32  # divides the tiny model's hidden (64) and intermediate (128) sizes
# Converted int weights against the fake-quantized forward, in fp32: the same rounding, so equal up to
# the order of float operations (measured: 0.0 on CPU).
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _model(seed: int = 0):
    return tiny_llama(VOCAB, seed)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("quantizer_type", ["int8_dynact_int4weight", "int4_weight_only"])
def test_fake_quantized_forward_differs_and_keeps_the_state_dict(quantizer_type):
    model, plain = _model().eval(), _model().eval()
    keys = list(model.state_dict())
    swapped = prepare_qat_model(model, QATConfig(quantizer_type, groupsize=GROUP))
    assert swapped == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and lm_head
    assert list(model.state_dict()) == keys  # the optimizer and checkpoints see the plain model
    ids = torch.randint(0, VOCAB, (2, 16))
    diff = (_logits(model, ids) - _logits(plain, ids)).abs().max()
    assert diff > 1e-3  # int4 rounding shows
    set_fake_quant(model, False)
    assert torch.equal(_logits(model, ids), _logits(plain, ids))  # off: exactly the float forward


def test_fake_quant_is_off_before_step_n():
    model, plain = _model().eval(), _model().eval()
    prepare_qat_model(model, QATConfig(groupsize=GROUP))
    schedule = FakeQuantSchedule(model, after_n_steps=2)
    ids = torch.randint(0, VOCAB, (2, 16))
    for step in (0, 1):
        schedule.before_step(step)
        assert torch.equal(_logits(model, ids), _logits(plain, ids)), step
    schedule.before_step(2)
    assert not torch.equal(_logits(model, ids), _logits(plain, ids))
    resumed = FakeQuantSchedule(model, after_n_steps=2)
    set_fake_quant(model, False)
    resumed.before_step(5)  # a run resumed past step N rounds at once
    assert not torch.equal(_logits(model, ids), _logits(plain, ids))


@pytest.mark.parametrize("quantizer_type", ["int8_dynact_int4weight", "int4_weight_only"])
def test_saved_model_reloads_and_converts_to_the_fake_quant_forward(tmp_path, quantizer_type):
    from torchao.quantization.qat import FakeQuantizedLinear
    from transformers import AutoModelForCausalLM

    config = QATConfig(quantizer_type, groupsize=GROUP)
    model = _model().train()
    prepare_qat_model(model, config)
    ids = torch.randint(0, VOCAB, (2, 16))
    # One optimizer step through the fake-quantized forward, so the saved weights are QAT-trained ones.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    fake_quant = _logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, FakeQuantizedLinear) for m in reloaded.modules())  # plain HF weights on disk
    convert_qat_model(reloaded, config)
    weight = reloaded.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor" and weight.qdata.dtype == torch.int8
    assert int(weight.qdata.min()) >= -8 and int(weight.qdata.max()) <= 7  # int4 values
    quantized = _logits(reloaded, ids)
    max_abs = float((quantized - fake_quant).abs().max())
    print(f"{quantizer_type}: converted vs fake-quant max abs diff {max_abs:.3g} (logits up to "
          f"{float(fake_quant.abs().max()):.3g})")
    assert max_abs <= TOLERANCE
    convert_qat_model(model, config)  # the training model itself converts to the same
    torch.testing.assert_close(_logits(model, ids), quantized, rtol=0, atol=TOLERANCE)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="quantizer_type"):
        QATConfig("int2_everything")
    with pytest.raises(ValueError, match="groupsize"):
        QATConfig(groupsize=0)
    with pytest.raises(ValueError, match="groupsize: 48 divides .* none"):
        prepare_qat_model(_model(), QATConfig(groupsize=48))


def test_missing_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match=r"pip install 'nemo_like\[qat\]'"):
        QATConfig().base_config()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


QAT_ARGS = ["--qat.enabled", "true", "--qat.fake_quant_after_n_steps", "1",
            "--qat.qat_config._target_", "nemo_like.components.quantization.qat.QATConfig",
            "--qat.qat_config.quantizer_type", "int8_dynact_int4weight", "--qat.qat_config.groupsize", str(GROUP)]


def test_recipe_with_a_qat_section(tiny_sft_env, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = tiny_sft_env["ckpt"]
    base = ["--config", TINY, "--step_scheduler.max_steps", "2", "--step_scheduler.val_every_steps", "none"]
    assert main([*base, "--checkpoint.checkpoint_dir", str(ckpt / "plain")]) == 0
    capsys.readouterr()
    assert main([*base, "--checkpoint.checkpoint_dir", str(ckpt / "qat"), *QAT_ARGS]) == 0
    err = capsys.readouterr().err
    assert "15 linear layers fake-quantized" in err and "QAT fake quantization on from step 1" in err
    plain, qat = _jsonl(ckpt / "plain" / "training.jsonl"), _jsonl(ckpt / "qat" / "training.jsonl")
    assert [r["step"] for r in qat] == [0, 1]
    assert qat[0]["loss"] == plain[0]["loss"]  # step 0: fake quantization still off, the float forward exactly
    assert qat[1]["loss"] != plain[1]["loss"]
    saved = ckpt / "qat" / "epoch_0_step_1"
    model = AutoModelForCausalLM.from_pretrained(saved / "model" / "consolidated")
    assert "qat_config" in (saved / "config.yaml").read_text()  # what is needed to convert travels with it
    convert_qat_model(model, QATConfig(groupsize=GROUP))


@pytest.mark.parametrize("edits, words", [
    (["--qat.enabled", "true"], ["qat.qat_config", "required"]),
    ([*QAT_ARGS, "--qat.qat_config.group_size", "32"], ["qat.qat_config.group_size", "groupsize"]),
    ([*QAT_ARGS, "--peft._target_", "nemo_like.components._peft.lora.PeftConfig"], ["qat", "LoRA"]),
    ([*QAT_ARGS[:-1], "48"], ["groupsize: 48", "none"]),
    ([*QAT_ARGS, "--loss_fn._target_", "nemo_like.components.loss.linear_ce.FusedLinearCrossEntropy"], ["qat", "fused"]),
    ([*QAT_ARGS[:4], "--qat.qat_config._target_", "torch.nn.Linear"], ["qat.qat_config._target_", "QATConfig"]),
])
def test_qat_mistakes_are_one_line_errors(tiny_sft_env, capsys, edits, words):
    ckpt = tiny_sft_env["ckpt"]
    assert main(["--config", TINY, "--checkpoint.checkpoint_dir", str(ckpt), *edits]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
