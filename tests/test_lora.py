"""LoRA / DoRA: numerical parity with HF PEFT, PEFT-format save/load, merging, matching."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from nemo_like.components._peft import lora as lora_mod  # noqa: E402
from nemo_like.components._peft.adapter_io import load_peft_adapter, save_peft_adapter  # noqa: E402
from nemo_like.components._peft.lora import (  # noqa: E402
    LinearLoRA,
    PeftConfig,
    apply_lora_to_linear_modules,
    lora_modules,
    merge_lora_weights,
)
from nemo_like.components._peft.module_matcher import ModuleMatcher, pattern_matches  # noqa: E402

VOCAB = 256


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).float()


def batches(n: int, seed: int = 1, bsz: int = 2, seq: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (bsz, seq), generator=g) for _ in range(n)]


def peft_layer(peft_model: PeftModel, name: str) -> nn.Module:
    return peft_model.base_model.model.get_submodule(name)


@torch.no_grad()
def copy_adapters_into_peft(ours: nn.Module, theirs: PeftModel) -> None:
    """Give PEFT's adapters exactly our initial values so both runs start identical."""
    for name, layer in lora_modules(ours):
        target = peft_layer(theirs, name)
        target.lora_A["default"].weight.copy_(layer.lora_A.weight)
        target.lora_B["default"].weight.copy_(layer.lora_B.weight)
        if layer.use_dora:
            target.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model))


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora_modules(model):
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
        if layer.use_dora:
            layer.lora_magnitude.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude.shape, generator=g))


# ---------------------------------------------------------------- parity with HF PEFT


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_five_training_steps_match_hf_peft(use_dora: bool) -> None:
    base = tiny_llama()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    cfg = PeftConfig(target_modules=["q_proj", "v_proj", "*.mlp.down_proj"], dim=8, alpha=16, use_dora=use_dora)
    assert apply_lora_to_linear_modules(ours, cfg) == 6
    theirs = get_peft_model(theirs, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, use_dora=use_dora,
                                               target_modules=["q_proj", "v_proj", "down_proj"],
                                               task_type="CAUSAL_LM"))
    copy_adapters_into_peft(ours, theirs)
    assert n_trainable(ours) == theirs.get_nb_trainable_parameters()[0]

    opt_ours = torch.optim.AdamW(trainable(ours), lr=1e-2)
    opt_theirs = torch.optim.AdamW(trainable(theirs), lr=1e-2)
    losses_ours, losses_theirs = [], []
    for ids in batches(5):
        for model, opt, losses in ((ours, opt_ours, losses_ours), (theirs, opt_theirs, losses_theirs)):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    assert losses_ours == pytest.approx(losses_theirs, abs=1e-5)
    assert losses_ours[-1] < losses_ours[0] - 0.01  # the adapters did learn something
    for name, layer in lora_modules(ours):  # and the learned weights agree too
        torch.testing.assert_close(layer.lora_B.weight, peft_layer(theirs, name).lora_B["default"].weight,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_forward_matches_hf_peft_with_nonzero_adapters(use_dora: bool) -> None:
    base = tiny_llama()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    apply_lora_to_linear_modules(ours, PeftConfig(match_all_linear=True, dim=4, alpha=8, dropout=0.2,
                                                  dropout_position="pre", use_dora=use_dora))
    randomize_adapters(ours)
    theirs = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, use_dora=use_dora,
                                               target_modules="all-linear", task_type="CAUSAL_LM"))
    copy_adapters_into_peft(ours, theirs)
    ours.eval(), theirs.eval()
    ids = batches(1)[0]
    with torch.no_grad():
        evaluated = ours(ids).logits
        torch.testing.assert_close(evaluated, theirs(ids).logits, atol=1e-5, rtol=0)
        assert (evaluated - base(ids).logits).abs().max() > 1e-3  # the adapters matter
        # "pre" dropout is PEFT's semantics: with the same RNG state the dropped-out outputs agree too
        ours.train(), theirs.train()
        torch.manual_seed(5)
        dropped = ours(ids).logits
        torch.manual_seed(5)
        torch.testing.assert_close(dropped, theirs(ids).logits, atol=1e-5, rtol=0)
        assert (dropped - evaluated).abs().max() > 1e-3


# ---------------------------------------------------------------- save / load / merge


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_saved_adapter_loads_in_peft_and_merge_exports(use_dora: bool, tmp_path) -> None:
    base = tiny_llama()
    ours = copy.deepcopy(base)
    cfg = PeftConfig(match_all_linear=True, dim=4, alpha=16, dropout=0.1, use_dora=use_dora)
    apply_lora_to_linear_modules(ours, cfg)
    opt = torch.optim.AdamW(trainable(ours), lr=1e-2)
    for ids in batches(3):
        ours(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    ours.eval()
    ids = batches(1, seed=7)[0]
    with torch.no_grad():
        ref = ours(ids).logits

    adapter_dir = save_peft_adapter(ours, cfg, tmp_path / "adapter", base_model_name_or_path="tiny-llama")
    meta = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4 and meta["lora_alpha"] == 16
    assert meta["use_dora"] is use_dora and meta["task_type"] == "CAUSAL_LM"
    assert meta["base_model_name_or_path"] == "tiny-llama"
    assert sorted(meta["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                              "v_proj"]

    loaded = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ref, atol=1e-5, rtol=0)

    # our own resume path: same adapters back into a fresh adapted copy, bit for bit
    resumed = copy.deepcopy(base)
    apply_lora_to_linear_modules(resumed, cfg)
    assert load_peft_adapter(resumed, adapter_dir) == 14 * (3 if use_dora else 2)
    with torch.no_grad():
        assert torch.equal(resumed.eval()(ids).logits, ref)

    merged = merge_lora_weights(ours)
    assert not list(lora_modules(merged))
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    assert set(merged.state_dict()) == set(base.state_dict())
    with torch.no_grad():
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, ref, atol=1e-4, rtol=0)

    merged.save_pretrained(tmp_path / "merged")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged_logits, atol=1e-6, rtol=0)


def test_load_refuses_mismatched_adapters(tmp_path) -> None:
    base = tiny_llama()
    src = copy.deepcopy(base)
    cfg = PeftConfig(target_modules=["q_proj", "v_proj"], dim=4)
    apply_lora_to_linear_modules(src, cfg)
    save_peft_adapter(src, cfg, tmp_path)

    wrong_rank = copy.deepcopy(base)
    apply_lora_to_linear_modules(wrong_rank, PeftConfig(target_modules=["q_proj", "v_proj"], dim=8))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_peft_adapter(wrong_rank, tmp_path)

    wrong_layers = copy.deepcopy(base)
    apply_lora_to_linear_modules(wrong_layers, PeftConfig(target_modules=["q_proj", "k_proj"], dim=4))
    with pytest.raises(ValueError, match="missing .*k_proj.*unexpected .*v_proj"):
        load_peft_adapter(wrong_layers, tmp_path)

    dora = copy.deepcopy(base)
    apply_lora_to_linear_modules(dora, PeftConfig(target_modules=["q_proj", "v_proj"], dim=4, use_dora=True))
    with pytest.raises(ValueError, match="lora_magnitude_vector"):
        load_peft_adapter(dora, tmp_path)


def test_partial_selection_is_saved_with_full_names(tmp_path) -> None:
    """When leaf names would over-select under PEFT's suffix rule, full names are written."""
    base = tiny_llama()
    ours = copy.deepcopy(base)
    cfg = PeftConfig(target_modules="model.layers.0.self_attn.q_proj", dim=4)
    assert apply_lora_to_linear_modules(ours, cfg) == 1
    randomize_adapters(ours)
    save_peft_adapter(ours, cfg, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["target_modules"] == ["model.layers.0.self_attn.q_proj"]
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert loaded.get_nb_trainable_parameters()[1] > 0 and sum(
        1 for n, _ in loaded.named_modules() if n.endswith("lora_A")) == 1
    ids = batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ours.eval()(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_linear_with_bias_merges_exactly(use_dora: bool) -> None:
    torch.manual_seed(0)
    layer = LinearLoRA(nn.Linear(12, 10), dim=3, alpha=6, lora_A_init="kaiming", use_dora=use_dora)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        if use_dora:
            layer.lora_magnitude.add_(0.5)
    x = torch.randn(5, 12)
    merged = layer.to_linear()
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=1e-5)
    assert merged.bias is layer.bias


# ---------------------------------------------------------------- matching and config


def test_glob_patterns() -> None:
    name = "model.layers.0.self_attn.q_proj"
    assert pattern_matches("*_proj", name)
    assert pattern_matches("model.layers.*.self_attn.q_proj", name)
    assert pattern_matches("q_proj", name) and pattern_matches("self_attn.q_proj", name)
    assert not pattern_matches("proj", name)  # a bare name must equal the last components
    assert pattern_matches("*.proj", "model.mlp.proj") and not pattern_matches("*.proj", "model.mlp_proj")
    assert not pattern_matches("model.*.q_proj", "xmodel.layers.0.q_proj")  # anchored at the start
    assert not pattern_matches("*q_proj", name + "_x")  # anchored at the end
    assert not pattern_matches("model.layers.?.self_attn.q_proj", name)  # only * is special
    matcher = ModuleMatcher(["*_proj"], ["*.mlp.*"])
    assert matcher.match(name, nn.Linear(2, 2))
    assert not matcher.match("model.layers.0.mlp.up_proj", nn.Linear(2, 2))
    assert not matcher.match(name, nn.Embedding(2, 2))


def test_exclude_and_match_all_linear() -> None:
    model = tiny_llama()
    assert apply_lora_to_linear_modules(model, PeftConfig(target_modules="*_proj", exclude_modules=["*.mlp.*"])) == 8
    assert all(".self_attn." in n for n, _ in lora_modules(model))
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)

    model = tiny_llama()
    base_keys = set(model.state_dict())
    assert apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True)) == 14
    assert type(model.lm_head) is nn.Linear
    assert base_keys <= set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in model.state_dict()
    # adapting again finds nothing new and says so instead of nesting adapters
    with pytest.raises(ValueError, match="already carries"):
        apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (dict(match_all_linear=True, dim=8), dict(r=8, target_modules="all-linear")),
        (dict(match_all_linear=True, dim=4, use_dora=True), dict(r=4, target_modules="all-linear", use_dora=True)),
        (dict(target_modules=["*.self_attn.*"], exclude_modules="*o_proj", dim=16),
         dict(r=16, target_modules=["q_proj", "k_proj", "v_proj"])),
    ],
    ids=["all-linear", "all-linear-dora", "attention-no-o"],
)
def test_trainable_count_equals_peft(ours: dict, theirs: dict) -> None:
    base = tiny_llama()
    model = copy.deepcopy(base)
    apply_lora_to_linear_modules(model, PeftConfig(**ours))
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="CAUSAL_LM", **theirs))
    assert n_trainable(model) == reference.get_nb_trainable_parameters()[0]


def test_no_match_lists_real_names() -> None:
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*model.layers.0.self_attn.q_proj.*gate_proj"):
        apply_lora_to_linear_modules(tiny_llama(), PeftConfig(target_modules=["*attention*"]))
    with pytest.warns(UserWarning, match="c_attn"):
        apply_lora_to_linear_modules(tiny_llama(), PeftConfig(target_modules=["q_proj", "c_attn"]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(target_modules=["q_proj"], match_all_linear=True), "target_modules"),
        (dict(match_all_linear=True, dim=0), "dim"),
        (dict(match_all_linear=True, dropout_position="middle"), "dropout_position"),
        (dict(match_all_linear=True, lora_A_init="normal"), "lora_A_init"),
        (dict(match_all_linear=True, dropout=1.5), "dropout"),
        (dict(match_all_linear=True, lora_dtype="int3"), "lora_dtype"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^peft\.{field}: [^\n]+$"):
        PeftConfig(**kwargs)


def test_config_defaults_and_warnings(monkeypatch) -> None:
    with pytest.warns(UserWarning, match=r"\*_proj"):
        cfg = PeftConfig()
    assert cfg.target_modules == ["*_proj"] and cfg.dim == 8 and cfg.alpha == 32 and cfg.scale == 4.0
    assert cfg.dropout_position == "post" and cfg.lora_A_init == "xavier" and cfg.lora_dtype is None
    assert PeftConfig(target_modules="q_proj").target_modules == ["q_proj"]

    monkeypatch.setattr(lora_mod, "_triton_warned", False)
    with pytest.warns(UserWarning, match="Triton"):
        assert PeftConfig(match_all_linear=True, use_triton=True).use_triton is True
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PeftConfig(match_all_linear=True, use_triton=True)  # only once per process


def test_lora_dtype_and_post_dropout() -> None:
    model = tiny_llama()
    apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True, lora_dtype="torch.bfloat16",
                                                   dropout=0.5, dropout_position="post"))
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.lora_A.weight.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    randomize_adapters(model)
    ids = batches(1)[0]
    out = model(ids).logits
    assert out.dtype == torch.float32
    with torch.no_grad():
        x = torch.randn(3, 64)
        layer.train()
        torch.manual_seed(0)
        a = layer(x)
        torch.manual_seed(1)
        b = layer(x)
        assert not torch.equal(a, b)  # dropout active in training
        layer.eval()
        assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapters_merged_for_sampling_give_the_same_outputs_and_leave_the_layers(use_dora: bool) -> None:
    from nemo_like.components._peft.lora import adapters_merged

    model = tiny_llama()
    apply_lora_to_linear_modules(model, PeftConfig(match_all_linear=True, dim=4, alpha=8, use_dora=use_dora))
    randomize_adapters(model)
    ids = batches(1)[0]
    with torch.no_grad():
        want = model(ids).logits
        with adapters_merged(model):
            assert all(layer.merged is not None for _, layer in lora_modules(model))
            got = model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert all(layer.merged is None for _, layer in lora_modules(model))
    loss = model(ids).logits.sum()
    loss.backward()  # the adapters train as before
    assert all(layer.lora_A.weight.grad is not None for _, layer in lora_modules(model))
