"""The contenders of ``grpo_throughput.py``, each run in its own process: the library's GRPO recipe and TRL's
GRPOTrainer on the same workload, and what they share (adapters' initial values, the timing of generation and of
each step). The parent script prepares the workload, alternates the runs and reports."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPE_YAML = REPO / "recipes" / "smollm2_135m" / "grpo_arithmetic.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUNNERS = ("ours", "ours_keep", "ours_fast", "trl", "trl_no_ckpt")

sys.path.insert(0, str(HERE))
from dpo_runners import StepLog, initial_adapters, peak_rss_mib, read_jsonl, set_adapters  # noqa: E402
from runners import _timed_callback  # noqa: E402
from workload import JSONRecord  # noqa: E402


@dataclass
class Workload(JSONRecord):
    """What a worker process needs to train its contender; written to JSON for it."""

    model: str  # "smollm2" or "tiny"
    model_dir: str  # what both load: the hub id of the embedded SmolLM2 (offline GGUF), or the tiny Llama's dir
    train_rows: str  # the raw rows trained on ({"prompt", "answer"}), in order: the recipe's dataset file
    prompts: str  # the same rows rendered by the library's PromptDataset: {"prompt" (text), "answer", "prompt_ids"}
    work_dir: str
    steps: int
    warmup_steps: int
    prompts_per_step: int
    num_generations: int
    max_completion_length: int
    lr: float = 1e-4  # the shipped recipe's
    lora_r: int = 16
    lora_alpha: int = 32
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    seed: int = 42
    threads: int = 2


class GenerationLog:
    """Each generation call of a run: its seconds and completion tokens (EOS included, padding not), and the
    seconds of the whole generate-and-score phase of each step (sampling, rewards, advantages, batching)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.completions: list[int] = []
        self.prepare_s: list[float] = []
        self.rewards: list[float] = []

    def add(self, seconds: float, completion_ids: list[list[int]]) -> None:
        self.seconds.append(seconds)
        self.tokens.append(sum(len(c) for c in completion_ids))
        self.completions.append(len(completion_ids))

    def record(self) -> dict[str, Any]:
        return {"generate_s": self.seconds, "generated_tokens": self.tokens, "completions": self.completions,
                "prepare_s": self.prepare_s, "rewards": self.rewards}


# ---------------------------------------------------------------- the library's recipe
def run_ours(w: Workload, name: str) -> dict[str, Any]:
    """The shipped recipe (grpo_arithmetic.yaml), with the workload's sizes; no validation, no checkpoints."""
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_grpo import TrainGRPORecipe

    log, gen = StepLog(), GenerationLog()

    class TimedRecipe(TrainGRPORecipe):
        """The recipe unchanged; it only notes when each step ended."""

        def _run_train_optim_step(self, batches):  # noqa: ANN001, ANN202 - the recipe's signature
            metrics = super()._run_train_optim_step(batches)
            log.end_step(metrics["loss"])
            gen.prepare_s.append(metrics["generation_s"])
            gen.rewards.append(metrics["reward"])
            return metrics

    cfg = load_yaml_config(RECIPE_YAML)
    n = w.steps * w.prompts_per_step
    for key, value in {
        "model.pretrained_model_name_or_path": w.model_dir,
        "peft.dim": w.lora_r, "peft.alpha": w.lora_alpha, "peft.dropout": 0.0,
        "grpo.num_generations": w.num_generations, "grpo.max_completion_length": w.max_completion_length,
        "grpo.temperature": w.temperature, "grpo.beta": 0.0, "grpo.loss_type": "dapo",
        "step_scheduler.global_batch_size": w.prompts_per_step, "step_scheduler.local_batch_size": w.prompts_per_step,
        "step_scheduler.max_steps": w.steps, "step_scheduler.val_every_steps": None,
        "step_scheduler.ckpt_every_steps": None,
        "optimizer.lr": w.lr, "optimizer.weight_decay": 0.0, "clip_grad_norm.max_norm": w.max_grad_norm,
        "dataset.path_or_dataset_id": w.train_rows, "dataset.limit_dataset_samples": n,
        "validation_dataset": None, "dataloader.shuffle": False,
        "checkpoint.enabled": False, "checkpoint.checkpoint_dir": str(Path(w.work_dir) / f"ckpt_{name}"),
        "rng.seed": w.seed, "disable_progress_bar": True,
        # ours_keep: every group updated, as TRL does (the shipped recipe leaves out groups with one reward)
        **({"grpo.zero_std_groups": "keep"} if name == "ours_keep" else {}),
        **({"grpo.sampler": "inverse_cdf"} if name == "ours_fast" else {}),  # one random number per row and step
    }.items():
        cfg.set_by_path(key, value)
    recipe = TimedRecipe(cfg)
    recipe.setup()
    if recipe.val_dataloader is not None:
        raise RuntimeError("ours: validation is still on")
    expected = [r["prompt_ids"] for r in read_jsonl(w.prompts)]
    tokens_match = [list(recipe.dataset[i]["prompt_ids"]) for i in range(len(recipe.dataset))] == expected
    set_adapters(recipe.model, initial_adapters(recipe.model, w.lora_r, w.seed))
    generate = recipe.generator.generate

    def timed_generate(prompt_ids, num_generations, sampling):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        rollout = generate(prompt_ids, num_generations, sampling)
        gen.add(time.perf_counter() - start, rollout.completion_ids)
        return rollout

    recipe.generator.generate = timed_generate
    log.start = time.perf_counter()
    result = recipe.run_train_validation_loop()
    rss = peak_rss_mib()
    history = result["history"]
    return dict(log.record(), **gen.record(), peak_rss_mib=rss, tokens_match=tokens_match,
                update_sequences=[h["num_sequences"] for h in history],
                recipe_generated_tokens_per_s=[h["generated_tokens_per_s"] for h in history],
                recipe_update_s=[h["update_s"] for h in history],
                recipe_mean_length=[h["completions/mean_length"] for h in history])


# ---------------------------------------------------------------- TRL
def run_trl(w: Workload, checkpointing: bool) -> dict[str, Any]:
    """TRL's GRPOTrainer + PEFT on the library's model object, with our adapters' initial values."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from nemo_like._transformers.auto_model import NeMoAutoModelForCausalLM
    from nemo_like._transformers.tokenizer import build_tokenizer
    from nemo_like.components.rewards.exact_answer import exact_answer

    log, gen = StepLog(), GenerationLog()
    seen_prompts: list[list[int]] = []
    g = w.num_generations

    class TimedGRPOTrainer(GRPOTrainer):
        """TRL unchanged; it times the generation call (and the whole generate-and-score phase) of each step."""

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            gen.add(time.perf_counter() - start, completion_ids)
            seen_prompts.extend(list(p) for p in prompt_ids[::g])  # each prompt comes G times in a row
            return completion_ids, logprobs

        def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            gen.prepare_s.append(time.perf_counter() - start)
            return out

    def note_reward(logs: dict[str, Any]) -> None:
        if "reward" in logs:
            gen.rewards.append(float(logs["reward"]))

    tokenizer = build_tokenizer(w.model_dir)
    model = NeMoAutoModelForCausalLM.from_pretrained(w.model_dir)
    initial = initial_adapters(model, w.lora_r, w.seed)
    rows = read_jsonl(w.prompts)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, num_generations=g, max_completion_length=w.max_completion_length,
                          temperature=w.temperature, per_device_train_batch_size=w.prompts_per_step * g,
                          gradient_accumulation_steps=1, learning_rate=w.lr, lr_scheduler_type="constant",
                          warmup_steps=0, optim="adamw_torch", weight_decay=0.0, max_grad_norm=w.max_grad_norm,
                          beta=0.0, loss_type="dapo", shuffle_dataset=False, use_cpu=True, bf16=False,
                          report_to=[], logging_steps=1, save_strategy="no", max_steps=w.steps,
                          disable_tqdm=True, dataloader_num_workers=0, seed=w.seed,
                          gradient_checkpointing=checkpointing)
        trainer = TimedGRPOTrainer(model=model, reward_funcs=[exact_answer], args=args, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=[_timed_callback(log, note_reward)],
                                   peft_config=LoraConfig(r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=0.0,
                                                          target_modules=TARGETS))
        set_adapters(trainer.model, initial, strip="base_model.model.")
        trainer.train()
    rss = peak_rss_mib()
    expected = [r["prompt_ids"] for r in rows]
    tokens_match = seen_prompts == expected[: len(seen_prompts)] and len(seen_prompts) == len(expected)
    assert tokens_match, "TRL generated from other prompt token ids than the library's PromptDataset gives"
    return dict(log.record(), **gen.record(), peak_rss_mib=rss, tokens_match=tokens_match,
                update_sequences=[w.prompts_per_step * g] * len(log.ends))


def run(name: str, w: Workload) -> dict[str, Any]:
    import torch

    torch.set_num_threads(w.threads)
    torch.manual_seed(w.seed)
    if name in ("ours", "ours_keep", "ours_fast"):
        return run_ours(w, name)
    if name in ("trl", "trl_no_ckpt"):
        return run_trl(w, checkpointing=name == "trl")
    raise ValueError(f"runner: {name!r} is not one of {list(RUNNERS)}")
