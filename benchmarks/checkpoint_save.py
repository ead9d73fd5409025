"""Bytes and seconds of one step checkpoint against ``save_pretrained`` + ``torch.save(optimizer)``, alternating.

    python benchmarks/checkpoint_save.py [--rounds 3] [--model HuggingFaceTB/SmolLM2-135M-Instruct]

Why: a full fine-tune's save is paid every ``ckpt_every_steps``; it should cost what the plain
Hugging Face way costs. One process loads the model (fp32), takes one AdamW step so the
optimizer holds its two moments, saves once with each side untimed (a process's first save pays
first-touch costs), then alternates, ``--rounds`` times each, into fresh directories under a temp
dir on the same disk:

* ``nemo_like``: ``Checkpointer.save`` of model, optimizer, LR scheduler and RNG (the step
  directory: model weights, consolidated HF directory, optimizer, manifest with SHA-256 and fsync);
* ``nemo_like_no_fsync``: the same with ``checkpoint.fsync: false`` (files left to the OS to write back);
* ``peer``: ``model.save_pretrained(dir)`` + ``torch.save(optimizer.state_dict(), dir/optimizer.pt)``
  (no checksums, no fsync);
* ``peer_fsync``: the peer, then ``os.fsync`` of each file it wrote (what a save that survives a power loss
  costs the plain way);
* ``lora_nemo_like``: a LoRA (r 8, all linear layers) run's save: the adapter and the merged consolidated
  export; ``lora_peer``: PEFT's way to the same files, ``merge_and_unload`` of a deep copy then
  ``save_pretrained`` (skipped without ``peft``).

Bytes are counted on disk (a file under two names once). Prints medians, ``ratio checkpoint_bytes
nemo_like/peer``, and the seconds like for like (goal: at most 1.05): ``nemo_like/peer_fsync`` (both on disk)
and ``nemo_like_no_fsync/peer`` (both in the page cache). With fsync the figures follow the disk, so
each side starts after ``os.sync()`` and the sides alternate.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def disk_bytes(path: str) -> int:
    seen: dict[tuple[int, int], int] = {}
    for here, _, names in os.walk(path):
        for name in names:
            stat = os.stat(os.path.join(here, name))
            seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()

    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules
    from nemo_like.components.checkpoint.checkpointing import Checkpointer, CheckpointingConfig
    from nemo_like.components.checkpoint.model_state import ModelState

    model = NeMoAutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (1, 32))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()

    lora_model = copy.deepcopy(model)
    peft = PeftConfig(match_all_linear=True, dim=8, alpha=16)
    apply_lora_to_linear_modules(lora_model, peft)

    def ours(out: str) -> None:
        Checkpointer(CheckpointingConfig(checkpoint_dir=out)).save(0, 0, {"model": model, "optim": optimizer})

    def no_fsync(out: str) -> None:
        Checkpointer(CheckpointingConfig(checkpoint_dir=out, fsync=False)).save(0, 0, {"model": model,
                                                                                     "optim": optimizer})

    def peer(out: str) -> None:
        model.save_pretrained(out)
        torch.save(optimizer.state_dict(), os.path.join(out, "optimizer.pt"))

    def peer_fsync(out: str) -> None:
        peer(out)
        for here, _, names in os.walk(out):
            for name in names:
                fd = os.open(os.path.join(here, name), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

    def lora_ours(out: str) -> None:
        Checkpointer(CheckpointingConfig(checkpoint_dir=out)).save(0, 0, {"model": ModelState(lora_model, None,
                                                                                               adapter=peft)})

    sides = {"nemo_like": ours, "peer_fsync": peer_fsync, "nemo_like_no_fsync": no_fsync, "peer": peer,
             "lora_nemo_like": lora_ours}
    try:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))

        def lora_peer(out: str) -> None:
            peft_model.save_pretrained(os.path.join(out, "adapter"))
            copy.deepcopy(peft_model).merge_and_unload().save_pretrained(os.path.join(out, "merged"))

        sides["lora_peer"] = lora_peer
    except ImportError:
        pass

    root = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    sizes: dict[str, int] = {}
    try:
        for name, save in sides.items():  # untimed: the first save of a process pays first-touch costs (~1.7 s more)
            out = str(root / f"{name}_warmup")
            save(out)
            shutil.rmtree(out)
        for r in range(args.rounds):
            for name, save in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                out = str(root / f"{name}_{r}")
                os.sync()
                start = time.perf_counter()
                save(out)
                seconds[name].append(time.perf_counter() - start)
                sizes[name] = disk_bytes(out)
                shutil.rmtree(out)
                print(f"round {r} {name:18s} {seconds[name][-1]:6.2f} s  {sizes[name] / 2**20:8.1f} MiB", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    for name in sides:
        print(f"{name:18s} median {med[name]:6.2f} s  {sizes[name] / 2**20:8.1f} MiB")
    print(f"ratio checkpoint_bytes nemo_like/peer {sizes['nemo_like'] / sizes['peer']:.2f}")
    print(f"ratio checkpoint_seconds nemo_like/peer_fsync {med['nemo_like'] / med['peer_fsync']:.2f}")
    print(f"ratio checkpoint_seconds nemo_like_no_fsync/peer {med['nemo_like_no_fsync'] / med['peer']:.2f}")
    if "lora_peer" in sides:
        print(f"ratio lora_checkpoint_seconds nemo_like/peer {med['lora_nemo_like'] / med['lora_peer']:.2f}")


if __name__ == "__main__":
    main()
