"""A supervised fine-tuning loop of your own, built from the library's parts (no recipe, no YAML).

    python examples/custom_loop/sft_loop.py --model HuggingFaceTB/SmolLM2-135M-Instruct \
        --data data/quickstart/train.jsonl --out checkpoints/custom_sft [--packed 512] [--steps 30]

Parts used: ColumnMappedTextInstructionDataset (rows -> pre-shifted input_ids/labels), the padding or
packing collater, LoRA, MaskedCrossEntropy normalised by the step's label tokens, StepScheduler
(micro-batches grouped into optimizer steps) and the Checkpointer (a directory `nemo-like eval` and
`nemo-like merge-lora` accept).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nemo_like import NeMoAutoModelForCausalLM
from nemo_like._transformers.tokenizer import build_tokenizer
from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules
from nemo_like.components.checkpoint.checkpointing import Checkpointer
from nemo_like.components.checkpoint.config import CheckpointingConfig
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence
from nemo_like.components.datasets.utils import default_collater, packed_sequence_collater
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.training.step_scheduler import StepScheduler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default="data/quickstart/train.jsonl")
    parser.add_argument("--out", default="checkpoints/custom_sft")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="rows per forward (gradient accumulation)")
    parser.add_argument("--packed", type=int, default=0, help="pack rows into sequences of this many tokens")
    parser.add_argument("--lr", type=float, default=1e-3)
    return parser.parse_args(argv)


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor], loss_fn: Callable[..., torch.Tensor],
            num_label_tokens: torch.Tensor) -> torch.Tensor:
    """One micro-batch's summed token loss over the step's label tokens (the library's normalisation)."""
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return loss_fn(logits, labels, num_label_tokens=num_label_tokens)


def main(argv: list[str] | None = None, loss_fn: Callable[..., torch.Tensor] | None = None) -> list[float]:
    """Train and checkpoint; ``loss_fn(logits, labels, num_label_tokens=n)`` replaces the masked cross-entropy."""
    args = parse_args(argv)
    torch.manual_seed(0)
    tokenizer = build_tokenizer(args.model)
    # 1. Data: rows -> pre-shifted input_ids / labels (prompt tokens carry IGNORE_INDEX), optionally packed.
    dataset = ColumnMappedTextInstructionDataset(args.data, {"question": "question", "answer": "answer"}, tokenizer,
                                                 use_hf_chat_template=True)
    collate = lambda rows: default_collater(rows, pad_token_id=tokenizer.pad_token_id)  # noqa: E731
    if args.packed:
        dataset = PackedSequence(dataset, args.packed, skip_long_samples=True)
        collate = packed_sequence_collater
    loader = StatefulDataLoader(dataset, batch_size=args.micro_batch_size, shuffle=True, collate_fn=collate)

    # 2. Model with LoRA adapters on every linear layer but the output head.
    model = NeMoAutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                     attn_implementation="packed_sdpa" if args.packed else "sdpa")
    peft = PeftConfig(match_all_linear=True, dim=8, alpha=32)
    apply_lora_to_linear_modules(model, peft)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    loss_fn = loss_fn or MaskedCrossEntropy()

    # 3. The step scheduler groups micro-batches into optimizer steps; the checkpointer writes step directories.
    scheduler = StepScheduler(global_batch_size=args.batch_size, local_batch_size=args.micro_batch_size,
                              max_steps=args.steps, ckpt_every_steps=args.steps, dataloader=loader)
    checkpointer = Checkpointer(CheckpointingConfig(enabled=True, checkpoint_dir=args.out))
    losses = []
    model.train()
    for epoch in scheduler.epochs:
        scheduler.set_epoch(epoch)
        for micro_batches in scheduler:
            num_label_tokens = sum((b["labels"] != -100).sum() for b in micro_batches)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for batch in micro_batches:
                loss = loss_of(model, dict(batch), loss_fn, num_label_tokens)
                loss.backward()
                step_loss += float(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(step_loss)
            print(f"step {scheduler.step} loss {step_loss:.4f}", flush=True)
            if scheduler.is_ckpt_step:
                state = ModelState(model, tokenizer=tokenizer, adapter=peft, base_model_name_or_path=args.model)
                checkpointer.save(epoch, scheduler.step, {"model": state, "optim": optimizer,
                                                          "step_scheduler": scheduler})
    print(f"checkpoint: {checkpointer.latest()}")
    return losses


if __name__ == "__main__":
    main()
