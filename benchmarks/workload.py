"""The one SFT workload every contender trains: same model, same tokens, same LoRA, same batch.

The documents are tokenized once, by the library's own instruction dataset (chat template,
answer-only labels), and handed to the other trainers as token ids, so every contender
sees identical ids and identical label masks; only the way they batch and compute differs.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_JSONL = REPO / "data" / "quickstart" / "train.jsonl"
HELDOUT_JSONL = REPO / "data" / "quickstart" / "validation.jsonl"
HELDOUT_DOCS = 32  # the held-out loss every run is scored by after its steps
# The short rows (50-59 tokens) that open train.jsonl; the long tail after them is left out, so
# the published figures (docs/performance.md) stay the measurement of this workload.
TRAIN_DOCS = 2000
COLUMNS = {"question": "question", "answer": "answer"}


class JSONRecord:
    """A dataclass a benchmark writes to JSON for its worker processes, which read it back."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class Workload(JSONRecord):
    """Everything a worker process needs to train its contender; written to JSON for it."""

    model: str  # "smollm2" (the embedded SmolLM2-135M-Instruct) or "tiny" (a 2-layer Llama, SmolLM2's vocabulary)
    model_dir: str
    tokens_path: str  # JSONL of {"input_ids", "labels"} (unshifted, -100 outside the answer), in file order
    heldout_path: str  # the same for the held-out documents (the task's validation split)
    steps: int
    warmup_steps: int
    docs_per_step: int  # padded contenders: documents per optimizer step
    pack_size: int  # packed contenders: tokens per pack
    packs_per_step: int  # packed contenders: packs per optimizer step (about docs_per_step documents in all)
    packs_per_micro_batch: int = 1  # packed contenders: packs per forward (the rest is gradient accumulation)
    lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    train_jsonl: str = str(TRAIN_JSONL)
    train_docs: int | None = TRAIN_DOCS  # rows of train_jsonl trained on (None: all)
    epoch: bool = False  # one epoch over the train_docs rows for every contender instead of `steps` steps
    extra: dict[str, Any] = field(default_factory=dict)


def tiny_model_dir(work_dir: Path, tokenizer_dir: str) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and 49,152-token vocabulary (random weights, tied embeddings)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = work_dir / "tiny_llama"
    if (out / "config.json").exists():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def write_shuffled(source: Path, out: Path, seed: int = 0) -> Path:
    """Every row of ``source`` in a seeded random order (the quickstart workload: short rows and the long tail
    mixed, as the recipe's shuffled loader sees them)."""
    import random

    rows = [line for line in source.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    out.write_text("\n".join(rows) + "\n")
    return out


def write_tokens(model_dir: str, out: Path, limit: int | None = TRAIN_DOCS,
                 source: Path = TRAIN_JSONL) -> dict[str, float]:
    """Tokenize task data with the library's dataset; write unshifted ids + labels; return length stats."""
    from nemo_like._transformers.tokenizer import build_tokenizer
    from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
        ColumnMappedTextInstructionDataset,
    )

    tokenizer = build_tokenizer(model_dir)
    dataset = ColumnMappedTextInstructionDataset(str(source), COLUMNS, tokenizer, use_hf_chat_template=True,
                                                 limit_dataset_samples=limit)
    lengths, labelled = [], []
    with out.open("w") as handle:
        for sample in dataset.samples:
            # The dataset stores the shifted pair; the HF trainers shift inside the model, so undo it.
            ids = list(sample["input_ids"]) + [sample["labels"][-1]]
            labels = [-100] + list(sample["labels"])
            handle.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
            lengths.append(len(ids))
            labelled.append(sum(1 for x in labels if x != -100))
    return {"documents": len(lengths), "mean_tokens": statistics.mean(lengths), "min_tokens": min(lengths),
            "max_tokens": max(lengths), "mean_label_tokens": statistics.mean(labelled)}


def read_tokens(path: str) -> list[dict[str, list[int]]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def heldout_loss(model: Any, path: str) -> float:
    """Mean answer-token cross-entropy of ``model`` on the held-out documents, one document per forward.

    Every contender is scored by this same function after its steps, so the figure compares
    what the runs learned, whatever batches, packs or document order each trained on.
    """
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in read_tokens(path):
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count


# ---------------------------------------------------------------- FLOPs
def model_config(model_dir: str) -> SimpleNamespace:
    """The fields of a model's config.json (enough for the FLOP counts, without importing transformers)."""
    return SimpleNamespace(**json.loads((Path(model_dir) / "config.json").read_text()))


def linear_shapes(config: Any) -> list[tuple[str, int, int]]:
    """(name, in, out) of every matmul a token goes through: the decoder's projections, then the output layer."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inter = config.intermediate_size
    layer = [("q_proj", hidden, heads * head_dim), ("k_proj", hidden, kv * head_dim), ("v_proj", hidden, kv * head_dim),
             ("o_proj", heads * head_dim, hidden), ("gate_proj", hidden, inter), ("up_proj", hidden, inter),
             ("down_proj", inter, hidden)]
    shapes = [(f"layers.{name}", i, o) for name, i, o in layer] * config.num_hidden_layers
    return shapes + [("lm_head", hidden, config.vocab_size)]


def model_flops(config: Any, doc_lengths: list[int], lora_r: int | None, loss_positions: int | None = None) -> float:
    """Training FLOPs of one pass over these documents by the plain algorithm (model FLOPs, as MFU counts them).

    Full fine-tuning is the usual 6 x params x tokens (forward 2, backward 4) over the matmul
    parameters, output layer included. With LoRA the frozen weights need no weight gradient,
    so they cost 4 x params x tokens (forward, gradient of the input), and the adapters
    6 x r x (in + out) x tokens. Causal attention inside each document adds
    3 x 4 x layers x width x (len + 1) / 2 per token (scores and values, forward + backward).
    Padding, and the parts of a packed row a document cannot see, are not counted.
    ``loss_positions``: count the output layer only at the positions the loss reads (its labels), the
    work a step needs; without it the output layer counts at every token, as the plain algorithm runs it.
    """
    shapes = linear_shapes(config)
    head = sum(i * o for name, i, o in shapes if name == "lm_head")
    base = sum(i * o for _, i, o in shapes) - head
    adapted = [(i, o) for name, i, o in shapes if name != "lm_head"]  # PEFT "all-linear" skips the output layer
    tokens = sum(doc_lengths)
    head_positions = tokens if loss_positions is None else loss_positions
    if lora_r:
        per_token = 4 * base + 6 * sum(lora_r * (i + o) for i, o in adapted)
        head_flops = 4 * head * head_positions
    else:
        per_token = 6 * base
        head_flops = 6 * head * head_positions
    heads = config.num_attention_heads
    width = (getattr(config, "head_dim", None) or config.hidden_size // heads) * heads
    attention = sum(12 * config.num_hidden_layers * width * n * (n + 1) / 2 for n in doc_lengths)
    return float(per_token * tokens + head_flops + attention)
