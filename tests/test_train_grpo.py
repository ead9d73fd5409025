"""The GRPO recipe against TRL's GRPOTrainer on the same completions, and against itself (micro-batches, ranks)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from nemo_like.components.rollout import Rollout

TINY = Path(__file__).parent / "configs" / "tiny_grpo.yaml"
G = 4


def prompt_rows(n: int, offset: int = 0) -> list[dict]:
    """Single-digit sums: every prompt has the same number of tokens (no prompt padding on either side)."""
    return [{"prompt": f"What is {(3 * i + offset) % 10} plus {(4 * i + 1) % 10}?",
             "answer": str((3 * i + offset) % 10 + (4 * i + 1) % 10)} for i in range(n)]


def completion_texts(answer: str) -> list[str]:
    """A group of G answers: right, wrong, right and long, empty-ish (two right for even sums), so rewards differ
    within a group and between prompts (and ranks)."""
    if int(answer) % 2 == 0:
        return [f" {answer}", f" {answer}.", f" {int(answer) + 1}", " no"]
    return [f" {answer}", f" {int(answer) + 1}", f" {answer} plus more", " no"]


class FixedCompletions:
    """The rollout source of a parity run: each prompt's completions fixed in advance, as TRL's ``rollout_func``
    gives them, so both trainers update on the same tokens."""

    def __init__(self, tokenizer, rows: list[dict]) -> None:
        self.table = {}
        for row in rows:
            ids = tuple(tokenizer(row["prompt"])["input_ids"])
            self.table[ids] = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]
                               for t in completion_texts(row["answer"])]
        self.used: dict[tuple, int] = {}

    def next_for(self, prompt_ids) -> list[int]:
        key = tuple(prompt_ids)
        k = self.used.get(key, 0)
        self.used[key] = k + 1
        return self.table[key][k % G]

    def generate(self, prompt_ids, num_generations, sampling) -> Rollout:
        completions = [self.next_for(p) for p in prompt_ids for _ in range(num_generations)]
        return Rollout(completion_ids=completions, logprobs=[[0.0] * len(c) for c in completions],
                       truncated=[False] * len(completions), seconds=1e-3,
                       generated_tokens=sum(map(len, completions)))


@pytest.fixture()
def grpo_env(monkeypatch, tmp_path, tiny_model_dir, one_thread) -> dict:
    train_rows, val_rows = prompt_rows(8), prompt_rows(4, offset=5)
    train = write_jsonl(tmp_path / "data" / "train.jsonl", train_rows)
    val = write_jsonl(tmp_path / "data" / "validation.jsonl", val_rows)
    for name, value in {"TEST_MODEL_DIR": tiny_model_dir, "TEST_TRAIN_PROMPTS": train, "TEST_VAL_PROMPTS": val,
                        "TEST_CKPT_DIR": str(tmp_path / "ckpt")}.items():
        monkeypatch.setenv(name, value)
    return {"tmp": tmp_path, "model": tiny_model_dir, "train_rows": train_rows, "ckpt": tmp_path / "ckpt"}


def make_recipe(overrides: dict | None = None, fixed: bool = True):
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_grpo import TrainGRPORecipe

    cfg = load_yaml_config(TINY)
    for key, value in {**({"validation_dataset": None} if fixed else {}), **(overrides or {})}.items():
        cfg.set_by_path(key, value)
    recipe = TrainGRPORecipe(cfg)
    recipe.setup()
    if fixed:
        rows = [json.loads(line) for line in Path(cfg.dataset.path_or_dataset_id).read_text().splitlines()]
        recipe.generator = FixedCompletions(recipe.tokenizer, rows)
    return recipe


def trl_history(env: dict, steps: int, grpo: dict) -> list[dict]:
    """TRL's GRPOTrainer on the same prompts, completions, rewards, model, AdamW and clipping, in order."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from nemo_like.components.rewards.exact_answer import exact_answer
    from nemo_like.components.rewards.length_penalty import LengthPenalty

    tokenizer = AutoTokenizer.from_pretrained(env["model"])
    fixed = FixedCompletions(tokenizer, env["train_rows"])

    def rollout_func(prompts, trainer):
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        completions = [fixed.next_for(p) for p in prompt_ids]
        return {"prompt_ids": prompt_ids, "completion_ids": completions,
                "logprobs": [[0.0] * len(c) for c in completions]}

    penalty = LengthPenalty(max_length=4)
    penalty.__name__ = "LengthPenalty"
    args = GRPOConfig(output_dir=str(env["tmp"] / "trl"), per_device_train_batch_size=2 * G, num_generations=G,
                      max_completion_length=8, learning_rate=1e-3, lr_scheduler_type="constant", weight_decay=0.0,
                      optim="adamw_torch", max_grad_norm=1.0, max_steps=steps, shuffle_dataset=False,
                      logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                      disable_tqdm=True, reward_weights=[1.0, 0.5], gradient_checkpointing=False, **grpo)
    model = AutoModelForCausalLM.from_pretrained(env["model"], dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_answer, penalty], args=args,
                          train_dataset=Dataset.from_list(env["train_rows"]), processing_class=tokenizer,
                          rollout_func=rollout_func)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h][:steps]


def updates(history: list[dict]) -> list[dict]:
    """Our records, one per optimizer update (a step makes ``num_iterations`` of them)."""
    return [{**h, **u} for h in history for u in h.get("iterations", [h])]


def assert_same(ours: list[dict], theirs: list[dict], keys: tuple[str, ...], tol: float = 1e-5) -> None:
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for key in keys:
            if key == "reward" and key not in b:  # TRL logs the reward with the update that generated
                continue
            assert abs(a[key] - b[key]) <= tol * max(1.0, abs(b[key])), (step, key, a[key], b[key])


PARITY = [
    ("grpo", 0.0, 1), ("dr_grpo", 0.0, 1), ("dapo", 0.0, 1),
    ("grpo", 0.1, 2), ("dr_grpo", 0.1, 2), ("dapo", 0.1, 2),
]


@pytest.mark.parametrize("loss_type,beta,iterations", PARITY)
def test_updates_equal_trl_grpo_trainer_step_by_step(grpo_env, loss_type, beta, iterations):
    """Same completions (TRL's rollout_func / our fixed rollout source): per-update loss, KL and clip fractions equal
    TRL's to 1e-5 in fp32; with two iterations the second update's ratios move off 1 and clip."""
    grpo = {"loss_type": loss_type, "beta": beta, "num_iterations": iterations, "temperature": 0.7,
            "epsilon": 0.05}
    steps = 4 // iterations
    recipe = make_recipe({"step_scheduler.max_steps": steps, **{f"grpo.{k}": v for k, v in grpo.items()}})
    ours = updates(recipe.run_train_validation_loop()["history"])
    theirs = trl_history(grpo_env, 4, grpo)
    keys = ("loss", "reward", "clip_ratio/region_mean") + (("kl",) if beta else ())
    assert_same(ours, theirs, keys)
    if iterations > 1:
        assert max(u["clip_ratio/region_mean"] for u in ours) > 0  # the clipped branch was exercised


def test_loss_is_the_same_under_any_split_into_micro_batches(grpo_env):
    whole = make_recipe({"grpo.beta": 0.1, "grpo.loss_type": "grpo"}).run_train_validation_loop()["history"]
    split = make_recipe({"grpo.beta": 0.1, "grpo.loss_type": "grpo", "step_scheduler.local_batch_size": 1}
                        ).run_train_validation_loop()["history"]
    for a, b in zip(whole, split, strict=True):
        for key in ("loss", "kl", "grad_norm", "reward"):
            assert abs(a[key] - b[key]) < 1e-6, (key, a[key], b[key])


def test_zero_std_groups_dropped_leave_the_update(grpo_env):
    """A group whose completions all score alike adds nothing but compute: ``drop`` leaves it out of the rows."""
    recipe = make_recipe({"grpo.zero_std_groups": "drop"})
    recipe.rewards = [("same", 1.0, lambda prompts, completions, **_: [1.0] * len(completions))]
    history = recipe.run_train_validation_loop()["history"]
    assert all(h["frac_reward_zero_std"] == 1.0 and h["num_sequences"] == 0 and h["loss"] == 0 for h in history)
    assert all(h["grad_norm"] == 0 for h in history)  # the backward ran (every rank reduces there), with nothing


def test_real_rollouts_train_and_report_held_out_accuracy(grpo_env):
    """The HF generator end to end: sampled groups, rewards logged by name, timings, held-out greedy accuracy."""
    recipe = make_recipe({"grpo.loss_type": "dapo", "step_scheduler.max_steps": 2,
                          "step_scheduler.val_every_steps": 2}, fixed=False)
    result = recipe.run_train_validation_loop()
    first = result["history"][0]
    for key in ("rewards/exact_answer/mean", "rewards/LengthPenalty/mean", "frac_reward_zero_std",
                "completions/mean_length", "generation_s", "update_s", "generated_tokens_per_s", "grad_norm"):
        assert key in first, key
    assert first["completions/max_length"] <= 8 and first["generated_tokens_per_s"] > 0
    assert 0.0 <= result["accuracy_before"] <= 1.0 and 0.0 <= result["accuracy_after"] <= 1.0


def test_config_errors_are_one_line_before_anything_loads(grpo_env):
    from nemo_like.config.errors import ConfigError
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.grpo_config import check_grpo_config

    cases = {"grpo.num_generations": (1, "num_generations"), "grpo.loss_type": ("ppo", "loss_type"),
             "rewards": ([], "reward"), "grpo.temperature": (0.0, "temperature"),
             "generation.backend": ("vllm", "vllm"), "loss_fn": ({"_target_": "x.y"}, "grpo section")}
    for key, (value, words) in cases.items():
        cfg = load_yaml_config(TINY)
        cfg.set_by_path(key, value)
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=words) as err:
            check_grpo_config(cfg)
        assert "\n" not in str(err.value) and time.perf_counter() - start < 1.0
    cfg = load_yaml_config(TINY)
    cfg.set_by_path("rewards", [{"_target_": "os.system", "weight": 1.0}])
    with pytest.raises(ConfigError, match="os.system"):
        check_grpo_config(cfg)


def _train_on_rank(env: dict, overrides: dict, fixed: bool) -> dict:
    """One rank of the GRPO recipe (a forked child): the global per-step figures it reports."""
    import os

    os.environ.update(env)
    out = make_recipe(overrides, fixed=fixed).run_train_validation_loop()
    return {k: [h[k] for h in out["history"]] for k in ("loss", "kl", "grad_norm", "reward", "reward_std",
                                                           "completions/mean_length", "num_sequences")}


@pytest.mark.slow
def test_two_ranks_train_like_one(grpo_env):
    """FSDP2 over 2 ranks, each generating for its own prompts: the global loss, KL and grad norm of one rank with
    the same micro-batches (fixed completions); and real sampling in lockstep (every forward is a collective)."""
    import os

    from nemo_like.components.distributed.fork_launcher import run_on_ranks

    env = {k: os.environ[k] for k in ("TEST_MODEL_DIR", "TEST_TRAIN_PROMPTS", "TEST_VAL_PROMPTS", "TEST_CKPT_DIR")}
    overrides = {"step_scheduler.local_batch_size": 1, "grpo.beta": 0.1, "grpo.loss_type": "grpo"}
    one = run_on_ranks(_train_on_rank, 1, env, overrides, True)[0]
    two = run_on_ranks(_train_on_rank, 2, env, overrides, True)
    assert two[0] == two[1]
    for key in ("loss", "kl", "grad_norm", "reward", "reward_std", "completions/mean_length"):
        assert max(abs(a - b) for a, b in zip(one[key], two[0][key], strict=True)) < 1e-6, (key, one, two[0])
    sampled = run_on_ranks(_train_on_rank, 2, env, {**overrides, "step_scheduler.max_steps": 2,
                                                    "step_scheduler.val_every_steps": 2}, False)
    assert sampled[0] == sampled[1] and sampled[0]["num_sequences"] == [2 * G, 2 * G]


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_shared_prompt_rows_score_like_one_row_per_completion(grpo_env, mask_truncated):
    """One [prompt, c_1..c_G] row per group (each prompt computed once) gives the updates of padded rows."""
    base = {"grpo.beta": 0.1, "grpo.num_iterations": 2, "grpo.mask_truncated_completions": mask_truncated,
            "step_scheduler.max_steps": 2}
    runs = {}
    for layout in ("padded", "shared_prompt"):  # each run right after its set-up, which seeds the sampling
        recipe = make_recipe({**base, "grpo.layout": layout}, fixed=False)
        assert recipe.layout == layout
        runs[layout] = updates(recipe.run_train_validation_loop()["history"])
    a, b = runs["padded"], runs["shared_prompt"]
    assert any(u["grad_norm"] > 0 for u in a)
    assert_same(a, b, ("loss", "kl", "clip_ratio/region_mean", "grad_norm", "reward"), tol=1e-5)
    if mask_truncated:
        assert any(h["completions/clipped_ratio"] > 0 for h in a)  # some completions were cut and masked out


def test_a_reward_of_ones_own_from_a_file_needs_user_modules_on(grpo_env, monkeypatch):
    from nemo_like.config.errors import ConfigError

    path = grpo_env["tmp"] / "my_rewards.py"
    path.write_text("def shorter(prompts, completions, **kw):\n    return [-len(c) / 10 for c in completions]\n")
    rewards = [{"_target_": f"{path}:shorter", "weight": 1.0}]
    with pytest.raises(ConfigError, match="NEMO_LIKE_ENABLE_USER_MODULES"):
        make_recipe({"rewards": rewards})
    monkeypatch.setenv("NEMO_LIKE_ENABLE_USER_MODULES", "1")
    history = make_recipe({"rewards": rewards, "step_scheduler.max_steps": 1}).run_train_validation_loop()["history"]
    assert "rewards/shorter/mean" in history[0] and history[0]["reward"] < 0
