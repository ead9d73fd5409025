"""NEFTune: noise of the right size on the input embeddings in training, none in eval, none in what is saved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from nemo_like.components.training.neftune import NEFTune, neftune_magnitude
from nemo_like.recipes.llm.run import main

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
VOCAB, HIDDEN = 320, 64


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _model(seed: int = 0):
    return tiny_llama(VOCAB, seed)


def _embedded(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The embedding layer's output as the decoder receives it (after every hook)."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        model(input_ids=input_ids)
    finally:
        handle.remove()
    return seen[0]


def test_train_mode_noise_is_uniform_with_the_neftune_bound():
    model = _model().train()
    ids = torch.randint(0, VOCAB, (4, 24))
    clean = model.get_input_embeddings()(ids).detach()
    neftune = NEFTune(noise_alpha=5.0)
    neftune.activate(model)
    noise = _embedded(model, ids) - clean
    bound = 5.0 / math.sqrt(24 * HIDDEN)
    assert neftune_magnitude(5.0, 24, HIDDEN) == pytest.approx(bound)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > 0.99 * bound  # 6144 uniform draws reach the bound
    assert noise.mean().abs() < 0.05 * bound
    assert noise.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # the standard deviation of U(-m, m)
    assert not torch.equal(_embedded(model, ids), _embedded(model, ids))  # fresh noise each forward
    neftune.deactivate(model)
    assert torch.equal(_embedded(model, ids), clean) and not neftune.is_active


def test_with_padding_the_bound_uses_the_padded_length():
    """As in TRL's and NeMo AutoModel's NEFTune: L is the padded row length, whatever the attention mask says."""
    model = _model().train()
    ids = torch.randint(0, VOCAB, (8, 40))
    mask = torch.ones_like(ids)
    mask[:, 10:] = 0  # every row has 10 real tokens and 30 pads
    NEFTune(noise_alpha=10.0).activate(model)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    model(input_ids=ids, attention_mask=mask)
    noise = (seen[0] - model.get_input_embeddings().weight[ids]).detach()
    padded_bound, real_bound = 10.0 / math.sqrt(40 * HIDDEN), 10.0 / math.sqrt(10 * HIDDEN)
    real_tokens = noise[:, :10]
    assert real_tokens.abs().max() <= padded_bound * (1 + 1e-5) < real_bound
    assert real_tokens.abs().max() > 0.99 * padded_bound
    assert noise[:, 10:].abs().max() > 0.99 * padded_bound  # pads get noise too (their loss is masked anyway)


def test_eval_mode_logits_equal_the_plain_model_bitwise():
    plain, noisy = _model(), _model()
    NEFTune(noise_alpha=15.0).activate(noisy)
    ids = torch.randint(0, VOCAB, (2, 16))
    plain.eval(), noisy.eval()
    with torch.no_grad():
        assert torch.equal(noisy(input_ids=ids).logits, plain(input_ids=ids).logits)
    noisy.train()
    with torch.no_grad():
        assert not torch.equal(noisy(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_saved_model_has_no_extra_keys_and_equals_the_plain_model(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    plain, noisy = _model(), _model()
    NEFTune(noise_alpha=5.0).activate(noisy)
    plain_state, noisy_state = plain.state_dict(), noisy.state_dict()
    assert list(noisy_state) == list(plain_state)
    assert all(torch.equal(noisy_state[k], plain_state[k]) for k in plain_state)
    noisy.save_pretrained(tmp_path / "noisy")
    plain.save_pretrained(tmp_path / "plain")
    saved_noisy, saved_plain = (load_file(tmp_path / name / "model.safetensors") for name in ("noisy", "plain"))
    assert saved_noisy.keys() == saved_plain.keys()
    assert all(torch.equal(saved_noisy[k], saved_plain[k]) for k in saved_plain)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "noisy").train()  # no hook comes back with it
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, plain.train()(input_ids=ids).logits)


def test_activate_twice_and_bad_alpha_are_refused():
    neftune = NEFTune(noise_alpha=5.0)
    model = _model()
    neftune.activate(model)
    with pytest.raises(RuntimeError, match="already active"):
        neftune.activate(model)
    for bad in (-1.0, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="noise_alpha"):
            NEFTune(noise_alpha=bad)
    with pytest.raises(ValueError, match="no input embedding"):
        NEFTune().activate(torch.nn.Linear(2, 2))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recipe_with_a_neftune_section_trains_with_noise_and_saves_the_plain_model(tiny_sft_env, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = tiny_sft_env["ckpt"]
    base = ["--config", TINY, "--step_scheduler.max_steps", "2", "--step_scheduler.val_every_steps", "none"]
    assert main([*base, "--checkpoint.checkpoint_dir", str(ckpt / "plain")]) == 0
    capsys.readouterr()
    assert main([*base, "--checkpoint.checkpoint_dir", str(ckpt / "noisy"), "--neftune.noise_alpha", "5.0"]) == 0
    assert "NEFTune on: noise_alpha=5" in capsys.readouterr().err
    plain, noisy = _jsonl(ckpt / "plain" / "training.jsonl"), _jsonl(ckpt / "noisy" / "training.jsonl")
    assert [r["step"] for r in noisy] == [0, 1]
    assert noisy[0]["loss"] != plain[0]["loss"]  # same weights, same batch: the noise is in the training forward
    saved = AutoModelForCausalLM.from_pretrained(ckpt / "noisy" / "epoch_0_step_1" / "model" / "consolidated")
    plain_saved = AutoModelForCausalLM.from_pretrained(ckpt / "plain" / "epoch_0_step_1" / "model" / "consolidated")
    assert saved.state_dict().keys() == plain_saved.state_dict().keys()


def test_neftune_section_is_typed():
    from nemo_like.config.errors import ConfigError
    from nemo_like.config.loader import ConfigNode
    from nemo_like.config.typed_sections import check_section
    from nemo_like.recipes.sections import NEFTuneSection

    assert check_section(ConfigNode({"noise_alpha": 5}), NEFTuneSection, "neftune").noise_alpha == 5.0
    with pytest.raises(ConfigError, match="neftune.alpha.*noise_alpha"):
        check_section(ConfigNode({"alpha": 5}), NEFTuneSection, "neftune")
    with pytest.raises(ConfigError, match="neftune.noise_alpha"):
        check_section(ConfigNode({"noise_alpha": -1}), NEFTuneSection, "neftune")
