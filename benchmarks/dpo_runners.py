"""The contenders of ``dpo_throughput.py``, each run in its own process: the library's DPO recipe and TRL's
DPOTrainer on the same workload, and what every contender shares (adapters' initial values, held-out scoring,
step timing). The parent script prepares the workload, alternates the runs and reports."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PACKED_COLLATER = "nemo_like.components.datasets.llm.preference_collater.packed_preference_collater"
SHARED_COLLATER = "nemo_like.components.datasets.llm.preference_collater.shared_prompt_preference_collater"
sys.path.insert(0, str(HERE))
from workload import JSONRecord  # noqa: E402 - beside this script

RUNNERS = ("ours_padded", "ours_shared", "ours_packed", "ours_precomputed", "trl", "trl_no_ckpt")


@dataclass
class Workload(JSONRecord):
    """What a worker process needs to train its contender; written to JSON for it."""

    model: str
    model_dir: str
    train_rows: str  # conversational rows, exactly the pairs trained on, in order
    train_tokens: str  # their prompt/chosen/rejected ids as the library tokenizes them (TRL's are checked against)
    heldout_tokens: str  # the held-out pairs' ids and their reference log-probs
    steps: int
    warmup_steps: int
    pairs_per_step: int
    lr: float = 5e-4
    beta: float = 0.1
    lora_r: int = 8
    lora_alpha: int = 16
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2


# ---------------------------------------------------------------- shared by every contender
def conversational(row: dict[str, Any]) -> dict[str, Any]:
    """A plain row as one user turn and two assistant answers (what the shipped DPO recipe trains on)."""
    if isinstance(row["prompt"], list):
        return {k: row[k] for k in ("prompt", "chosen", "rejected")}
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def initial_adapters(model: Any, r: int, seed: int) -> dict[str, Any]:
    """LoRA A matrices for every targeted projection, PEFT's Kaiming-uniform law, from one seed.

    Both trainers start from these (B is zero in both), so their held-out losses differ only by what they did.
    Keyed by the projection's module name in the plain transformers model (``model.layers.0.self_attn.q_proj``).
    """
    import torch

    widths = {name: module.in_features for name, module in model.named_modules()
              if name.rsplit(".", 1)[-1] in TARGETS and hasattr(module, "in_features")}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(widths):  # sorted: the same draws whatever order a model lists its modules in
        out[name] = (torch.rand(r, widths[name], generator=gen) * 2 - 1) / widths[name] ** 0.5
    return out


def set_adapters(model: Any, initial: dict[str, Any], strip: str = "") -> int:
    """Copy ``initial`` into every ``<projection>.lora_A...weight`` of ``model``; returns how many were set."""
    import torch

    done = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." not in name:
                continue
            key = name.removeprefix(strip).split(".lora_A.")[0].removesuffix(".base_layer")
            param.copy_(initial[key])
            done += 1
    if done != len(initial):
        raise RuntimeError(f"set {done} LoRA A matrices, expected {len(initial)}")
    return done


def completion_logps(model: Any, pairs: list[dict[str, list[int]]],
                     batch_pairs: int = 8) -> tuple[list[float], list[float]]:
    """Summed completion log-probs (chosen, rejected) of each pair: right-padded batches, full log-softmax in fp32."""
    import torch

    chosen, rejected = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_pairs):
            part = pairs[start : start + batch_pairs]
            rows = [(p["prompt_ids"], p[key]) for key in ("chosen_ids", "rejected_ids") for p in part]
            width = max(len(a) + len(b) for a, b in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            attention = torch.zeros_like(ids)
            completion = torch.zeros_like(ids)
            for i, (prompt, answer) in enumerate(rows):
                n, m = len(prompt), len(answer)
                ids[i, : n + m] = torch.tensor(prompt + answer)
                attention[i, : n + m] = 1
                completion[i, n : n + m] = 1
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
            logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            sums = (logps * completion[:, 1:]).sum(-1).tolist()
            chosen += sums[: len(part)]
            rejected += sums[len(part) :]
    model.train()
    return chosen, rejected


def heldout_loss(model: Any, reference_path: str, beta: float) -> dict[str, float]:
    """Sigmoid DPO loss and reward accuracy of ``model`` on the held-out pairs, against the stored reference."""
    import torch
    import torch.nn.functional as F

    pairs = read_jsonl(reference_path)
    chosen, rejected = completion_logps(model, pairs)
    c, r = torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    rc = torch.tensor([p["ref_chosen"] for p in pairs], dtype=torch.float64)
    rr = torch.tensor([p["ref_rejected"] for p in pairs], dtype=torch.float64)
    margin = beta * ((c - rc) - (r - rr))
    return {"heldout_loss": float(-F.logsigmoid(margin).mean()),
            "heldout_accuracy": float((margin > 0).double().mean())}


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepLog:
    """When each optimizer step ended (from the start of the training loop) and the loss it logged."""

    def __init__(self) -> None:
        self.start = 0.0
        self.ends: list[float] = []
        self.losses: list[float] = []

    def end_step(self, loss: float | None = None) -> None:
        self.ends.append(time.perf_counter() - self.start)
        if loss is not None:
            self.losses.append(float(loss))

    def record(self) -> dict[str, Any]:
        return {"step_end_s": self.ends, "losses": self.losses[: len(self.ends)]}


# ---------------------------------------------------------------- (a), (b), (c): the library's recipe
def run_ours(w: Workload, collate: str | None, reference: str) -> dict[str, Any]:
    from nemo_like.config.loader import ConfigNode
    from nemo_like.recipes.llm.train_dpo import TrainDPORecipe

    log = StepLog()
    precompute_s = [0.0]

    class TimedRecipe(TrainDPORecipe):
        """The recipe unchanged; it only notes when each step ended and how long precomputing took."""

        def _run_train_optim_step(self, batches):  # noqa: ANN001, ANN202 - the recipe's signature
            metrics = super()._run_train_optim_step(batches)
            log.end_step(metrics["loss"])
            return metrics

        def _precompute(self, table, dataset):  # noqa: ANN001, ANN202
            start = time.perf_counter()
            super()._precompute(table, dataset)
            precompute_s[0] += time.perf_counter() - start

    dataloader: dict[str, Any] = {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader", "shuffle": False}
    if collate:
        dataloader["collate_fn"] = collate
    raw: dict[str, Any] = {
        "model": {"_target_": "nemo_like.NeMoAutoModelForCausalLM.from_pretrained",
                  "pretrained_model_name_or_path": w.model_dir, "torch_dtype": "float32", "fused_swiglu": True},
        "peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig", "target_modules": TARGETS,
                 "dim": w.lora_r, "alpha": w.lora_alpha, "dropout": 0.0, "lora_A_init": "kaiming"},
        "dpo": {"beta": w.beta, "loss_type": "sigmoid"},
        "reference": {"mode": reference},
        "step_scheduler": {"global_batch_size": w.pairs_per_step, "local_batch_size": w.pairs_per_step,
                           "max_steps": w.steps, "val_every_steps": None},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": w.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                      "weight_decay": 0.0},
        "clip_grad_norm": {"max_norm": w.max_grad_norm},
        "dataset": {"_target_": "nemo_like.components.datasets.llm.preference_dataset.PreferenceDataset",
                    "path_or_dataset_id": w.train_rows},
        "dataloader": dataloader,
        "checkpoint": {"enabled": False},
        "rng": {"_target_": "nemo_like.components.training.rng.StatefulRNG", "seed": w.seed},
        "disable_progress_bar": True,
        "trim_cpu_heap": True,
    }
    recipe = TimedRecipe(ConfigNode(raw))
    recipe.setup()
    set_adapters(recipe.model, initial_adapters(recipe.model, w.lora_r, w.seed))
    log.start = time.perf_counter()
    recipe.run_train_validation_loop()
    rss = peak_rss_mib()
    return dict(log.record(), peak_rss_mib=rss, precompute_s=precompute_s[0], tokens_match=True,
                **heldout_loss(recipe.model, w.heldout_tokens, w.beta))


# ---------------------------------------------------------------- (d), (e): TRL
def run_trl(w: Workload, checkpointing: bool) -> dict[str, Any]:
    """TRL's DPOTrainer as tests/test_train_dpo.py runs it against the recipe, with our adapters' initial values."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    sys.path.insert(0, str(HERE))
    from runners import _timed_callback  # noqa: PLC0415 - the SFT benchmark's step timer, beside this script

    log = StepLog()

    tokenizer = AutoTokenizer.from_pretrained(w.model_dir)
    base = AutoModelForCausalLM.from_pretrained(w.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    initial = initial_adapters(base, w.lora_r, w.seed)
    policy = get_peft_model(base, LoraConfig(r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=0.0,
                                             target_modules=TARGETS))
    set_adapters(policy, initial, strip="base_model.model.")
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=w.pairs_per_step, max_steps=w.steps,
                         learning_rate=w.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         optim="adamw_torch", adam_epsilon=1e-8, max_grad_norm=w.max_grad_norm, beta=w.beta,
                         loss_type=["sigmoid"], train_sampling_strategy="sequential", logging_steps=1,
                         save_strategy="no", report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                         dataloader_num_workers=0, seed=w.seed, gradient_checkpointing=checkpointing)
        trainer = DPOTrainer(model=policy, ref_model=None, args=args,
                             train_dataset=Dataset.from_list(read_jsonl(w.train_rows)), processing_class=tokenizer,
                             callbacks=[_timed_callback(log)])
        theirs = [{k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                  for row in trainer.train_dataset]
        trainer.train()
    rss = peak_rss_mib()
    return dict(log.record(), peak_rss_mib=rss, precompute_s=0.0, tokens_match=theirs == read_jsonl(w.train_tokens),
                **heldout_loss(trainer.model, w.heldout_tokens, w.beta))


def run(name: str, w: Workload) -> dict[str, Any]:
    import torch

    torch.set_num_threads(w.threads)
    torch.manual_seed(w.seed)
    if name == "ours_padded":
        return run_ours(w, None, "adapter_off")
    if name == "ours_shared":
        return run_ours(w, SHARED_COLLATER, "adapter_off")
    if name == "ours_packed":
        return run_ours(w, PACKED_COLLATER, "adapter_off")
    if name == "ours_precomputed":
        return run_ours(w, None, "precomputed")
    if name in ("trl", "trl_no_ckpt"):
        return run_trl(w, checkpointing=name == "trl")
    raise ValueError(f"runner: {name!r} is not one of {list(RUNNERS)}")
