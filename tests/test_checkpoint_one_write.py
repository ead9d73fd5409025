"""Each tensor of a checkpoint is written once, and what is read back is what was written before.

A full fine-tune's ``model/model.safetensors`` is the consolidated directory's file under a
second name (a hard link); a LoRA/DoRA run's consolidated export is streamed tensor by tensor
from the live model (no copy of it) and equals, bit for bit, the old way: a deep copy with
the adapters merged, saved by ``save_pretrained``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules, merge_lora_weights
from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointingConfig
from nemo_like.components.checkpoint.manifest import read_manifest
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.components.checkpoint.streamed_safetensors import write_streamed
from nemo_like.components.checkpoint.weight_link import link_or_copy

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _tiny(tie: bool = True) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                        tie_word_embeddings=tie))


@pytest.mark.parametrize("tie", [True, False])
def test_full_weights_are_one_file_under_two_names_and_resume_exactly(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    model = _tiny(tie)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 96, (2, 8)), labels=torch.randint(0, 96, (2, 8))).loss.backward()
    optimizer.step()
    step = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path))).save(
        0, 0, {"model": model, "optim": optimizer})
    own, hf = Path(step, "model", "model.safetensors"), Path(step, "model", "consolidated", "model.safetensors")
    assert os.path.samefile(own, hf)
    manifest = read_manifest(step)["files"]
    assert manifest["model/model.safetensors"] == manifest["model/consolidated/model.safetensors"]

    x = torch.randint(0, 96, (1, 9))
    reloaded = AutoModelForCausalLM.from_pretrained(hf.parent)
    assert torch.equal(reloaded(x).logits, model(x).logits)
    fresh = _tiny(tie)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path))).load(step, {"model": fresh, "optim": fresh_optimizer})
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert str(fresh_optimizer.state_dict()) == str(optimizer.state_dict())


@pytest.mark.parametrize("dora", [False, True])
def test_a_lora_export_is_streamed_and_equals_the_deep_copy_merge(tmp_path, dora):
    from transformers import AutoModelForCausalLM

    model = _tiny()
    peft = PeftConfig(match_all_linear=True, dim=4, use_dora=dora)
    apply_lora_to_linear_modules(model, peft)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    step = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path / "ckpt"))).save(
        0, 0, {"model": ModelState(model, None, adapter=peft)})
    assert all(torch.equal(live[k], v) for k, v in model.state_dict().items())  # the live model is untouched

    merged = merge_lora_weights(copy.deepcopy(model))
    merged.save_pretrained(tmp_path / "old")
    want = load_file(tmp_path / "old" / "model.safetensors")
    got = load_file(Path(step, "model", "consolidated", "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(os.listdir(Path(step, "model", "consolidated"))) == sorted(os.listdir(tmp_path / "old"))
    x = torch.randint(0, 96, (1, 9))
    reloaded = AutoModelForCausalLM.from_pretrained(Path(step, "model", "consolidated"))
    assert torch.equal(reloaded(x).logits, merged(x).logits)


def test_the_streamed_writer_reads_back_as_safetensors_writes(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.tensor(3.5),
               "d": torch.zeros(0, 4), "e": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "f": torch.tensor([True, False, True]), "g": torch.randn(4, 4).t()}  # g: not contiguous
    entries = [(k, t.dtype, tuple(t.shape), (lambda t=t: t)) for k, t in tensors.items()]
    written = write_streamed(tmp_path / "s.safetensors", entries, {"format": "pt"})
    assert written == os.path.getsize(tmp_path / "s.safetensors")
    back = load_file(tmp_path / "s.safetensors")
    save_file({k: t.contiguous() for k, t in tensors.items()}, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    ref = load_file(tmp_path / "ref.safetensors")
    assert list(back) == list(tensors) and all(torch.equal(back[k], ref[k]) and back[k].dtype == ref[k].dtype
                                               for k in tensors)
    with pytest.raises(ValueError, match="b: made torch.float32"):
        write_streamed(tmp_path / "bad.safetensors", [("b", torch.bfloat16, (7,), lambda: torch.randn(7))])


def test_a_filesystem_without_links_gets_a_copy(tmp_path):
    source = tmp_path / "w.bin"
    source.write_bytes(b"weights" * 100)
    assert link_or_copy(str(source), str(tmp_path / "linked.bin")) == "link"
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to link across")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:  # links cannot cross filesystems
        target = os.path.join(other, "copied.bin")
        assert link_or_copy(str(source), target) == "copy"
        assert Path(target).read_bytes() == source.read_bytes() and not os.path.samefile(source, target)


def test_a_manifest_of_sha256_checksums_still_verifies_and_names_a_changed_file(tmp_path):
    import hashlib
    import json

    from nemo_like.components.checkpoint.checkpointing import CheckpointError
    from nemo_like.components.checkpoint.manifest import verify_manifest

    model = _tiny()
    step = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path))).save(0, 0, {"model": model})
    assert read_manifest(step)["algorithm"] == "xxh3_128"
    files = {}
    for rel in read_manifest(step)["files"]:  # the manifest an earlier version wrote
        data = Path(step, rel).read_bytes()
        files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    Path(step, "MANIFEST.json").write_text(json.dumps({"version": 1, "algorithm": "sha256", "files": files}))
    verify_manifest(step)
    weights = Path(step, "model", "consolidated", "model.safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="consolidated/model.safetensors does not match its sha256 checksum"):
        verify_manifest(step)


def test_without_fsync_a_step_is_still_sealed_and_resumes(tmp_path):
    model = _tiny()
    step = Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path), fsync=False)).save(0, 0, {"model": model})
    Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path))).verify(step)
    fresh = _tiny()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    Checkpointer(CheckpointingConfig(checkpoint_dir=str(tmp_path))).load(step, {"model": fresh})
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
