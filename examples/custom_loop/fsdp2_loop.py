"""The custom SFT loop on several processes: FSDP2 from the library's parallelizer, one checkpoint for all ranks.

    torchrun --nproc-per-node 2 examples/custom_loop/fsdp2_loop.py --model HuggingFaceTB/SmolLM2-135M-Instruct \
        --out checkpoints/custom_fsdp2

Each rank reads its own share of the rows (a distributed sampler), the label count of a step is
summed over ranks before the loss is divided by it, FSDP2 averages the gradients over ranks (so the
loss is scaled by the world size), and every rank calls ``save``: each writes its shards, rank 0
completes the directory. The result equals one process with the whole batch.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from nemo_like import NeMoAutoModelForCausalLM
from nemo_like._transformers.tokenizer import build_tokenizer
from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules
from nemo_like.components.checkpoint.checkpointing import Checkpointer
from nemo_like.components.checkpoint.config import CheckpointingConfig
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.utils import default_collater
from nemo_like.components.distributed.config import FSDP2Config
from nemo_like.components.distributed.init import all_reduce_sum, destroy_distributed, initialize_distributed
from nemo_like.components.distributed.parallelizer import parallelize_model
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.components.training.step_scheduler import StepScheduler


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default="data/quickstart/train.jsonl")
    parser.add_argument("--out", default="checkpoints/custom_fsdp2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step, all ranks together")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)

    info = initialize_distributed("gloo" if not torch.cuda.is_available() else "nccl")  # torchrun's environment
    torch.manual_seed(0)  # the same initial adapters on every rank
    tokenizer = build_tokenizer(args.model)
    dataset = ColumnMappedTextInstructionDataset(args.data, {"question": "question", "answer": "answer"}, tokenizer,
                                                 use_hf_chat_template=True)
    local = args.batch_size // info.world_size
    sampler = StatefulDistributedSampler(dataset, num_replicas=info.dp_size, rank=info.dp_rank, shuffle=True, seed=0)
    loader = StatefulDataLoader(dataset, batch_size=local, sampler=sampler,
                                collate_fn=lambda rows: default_collater(rows, pad_token_id=tokenizer.pad_token_id))

    model = NeMoAutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    peft = PeftConfig(match_all_linear=True, dim=8, alpha=32)
    apply_lora_to_linear_modules(model, peft)
    model.to(info.device)
    if info.world_size > 1:
        model = parallelize_model(model, info.mesh, FSDP2Config())  # each decoder block sharded over the ranks
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    loss_fn = MaskedCrossEntropy()
    scheduler = StepScheduler(global_batch_size=args.batch_size, local_batch_size=local, max_steps=args.steps,
                              ckpt_every_steps=args.steps, dp_size=info.dp_size, dataloader=loader)
    checkpointer = Checkpointer(CheckpointingConfig(enabled=True, checkpoint_dir=args.out), is_main=info.is_main)
    losses = []
    for epoch in scheduler.epochs:
        scheduler.set_epoch(epoch)
        for micro_batches in scheduler:
            # The step's label tokens over every micro-batch and every rank: the loss's denominator.
            num_label_tokens = all_reduce_sum(sum((b["labels"] != -100).sum() for b in micro_batches))
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros(())
            for batch in micro_batches:
                batch = {k: v.to(info.device) for k, v in batch.items()}
                labels = batch.pop("labels")
                loss = loss_fn(model(**batch).logits, labels, num_label_tokens=num_label_tokens)
                (loss * info.world_size).backward()  # FSDP2 averages gradients over ranks; this restores the sum
                step_loss += loss.detach().cpu()
            optimizer.step()
            losses.append(float(all_reduce_sum(step_loss)))
            if info.is_main:
                print(f"step {scheduler.step} loss {losses[-1]:.4f}", flush=True)
            if scheduler.is_ckpt_step:
                state = ModelState(model, tokenizer=tokenizer, adapter=peft, base_model_name_or_path=args.model)
                checkpointer.save(epoch, scheduler.step, {"model": state, "optim": optimizer})
    if info.is_main:
        print(f"checkpoint: {checkpointer.latest()}")
    if dist.is_initialized():
        dist.barrier()
    destroy_distributed()
    return losses


if __name__ == "__main__":
    main()
