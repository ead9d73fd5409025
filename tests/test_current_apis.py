"""Current APIs only: a training run with generation emits no deprecation notice from transformers, torch or
datasets, and reading a GGUF says what happens in one line of the library's own log."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from nemo_like.recipes.llm.run import main

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")
WATCHED = ("/nemo_like/", "/transformers/", "/torch/", "/datasets/")


def _deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    """DeprecationWarning / FutureWarning raised by, or pointing at, our code and the three libraries."""
    return [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning))
            and any(part in w.filename.replace("\\", "/") for part in WATCHED)]


def test_a_tiny_training_and_generation_run_uses_no_deprecated_api(tiny_sft_env, one_thread):
    args = ["--config", TINY, "--generation_eval.path_or_dataset_id", tiny_sft_env["validation"],
            "--generation_eval.column_mapping", "{question: input, answer: response}",
            "--generation_eval.max_new_tokens", "3", "--generation_eval.batch_size", "4",
            "--packed_sequence.packed_sequence_size", "96"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert not _deprecations(caught), _deprecations(caught)


def test_the_generation_cache_goes_by_its_current_name(tiny_model_dir):
    import inspect

    from transformers import LlamaForCausalLM

    from nemo_like.components.eval.exact_match import _cache_name

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert _cache_name(model) == expected


def test_torchs_notice_about_torchaos_enums_is_dropped_and_others_pass():
    import nemo_like  # noqa: F401 - installs the filter

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    pytree = logging.getLogger("torch.utils._pytree")
    handler = Keep(level=logging.DEBUG)
    pytree.addHandler(handler)
    try:
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
                       "type. Calling register_constant() on Enum subclasses is deprecated and will be an error "
                       "in a future release.", "<enum 'KernelPreference'>")
        pytree.warning("something else")
    finally:
        pytree.removeHandler(handler)
    assert seen == ["something else"]


def test_reading_a_gguf_shows_no_bars_and_says_one_line(capfd, caplog, monkeypatch):
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from nemo_like._transformers import embedded
    from nemo_like._transformers.gguf_dense import quiet_gguf_loading

    original = gguf_utils.tqdm
    capfd.readouterr()
    with quiet_gguf_loading():
        assert sum(1 for _ in gguf_utils.tqdm(range(50), desc="Converting and de-quantizing GGUF tensors...")) == 50
        assert sum(1 for _ in transformers.utils.logging.tqdm(range(50), desc="Loading weights")) == 50
    err = capfd.readouterr().err
    assert "Converting" not in err and "Loading weights" not in err and "\r" not in err
    assert gguf_utils.tqdm is original  # put back
    # the conversion's one line: where the model comes from and that it is converted now; no second line after
    monkeypatch.setattr(embedded, "_announced", set())
    caplog.set_level(logging.INFO, logger="nemo_like")
    target = Path("/tmp/cache/embedded/SmolLM2-135M-Instruct")
    embedded._announce(target, converting=True)
    embedded._announce(target)
    lines = [r.getMessage() for r in caplog.records if r.name == "nemo_like"]
    assert len(lines) == 1 and "converting it once" in lines[0] and str(target) in lines[0], lines

