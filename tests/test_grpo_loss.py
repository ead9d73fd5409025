"""GRPO loss and advantages equal TRL 1.16's GRPOTrainer on a real model, and add up over any micro-batch split."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_tokenizer, tiny_llama
from nemo_like.components.loss.grpo import PolicyGradientLoss, group_advantages, mask_truncated

TEMPERATURE = 0.7
MAX_COMPLETION = 8
EPS_LOW, EPS_HIGH = 0.2, 0.28
# The rewards the oracle trainer's reward function hands out, set by each advantage test (None = unscorable).
_NEXT_REWARDS: list[float | None] = []


def _scripted_reward(completions, **kwargs) -> list[float | None]:
    assert len(completions) == len(_NEXT_REWARDS)
    return list(_NEXT_REWARDS)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, one_thread):
    """One real TRL GRPOTrainer (tiny random Llama, CPU, fp32) for the whole module; tests reset its fields."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = build_tiny_tokenizer()  # its own: the trainer may set fields on it
    model = tiny_llama(len(tokenizer), seed=3)
    prompts = Dataset.from_dict({"prompt": [f"What is {i} plus {i + 2}?" for i in range(12)]})
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl_grpo")), use_cpu=True, bf16=False, report_to=[],
        per_device_train_batch_size=4, num_generations=4, generation_batch_size=12,  # three prompt groups
        max_completion_length=MAX_COMPLETION, temperature=TEMPERATURE, epsilon=EPS_LOW, epsilon_high=EPS_HIGH,
        beta=0.0, seed=0,
    )
    trl = GRPOTrainer(model=model, reward_funcs=_scripted_reward, args=args, train_dataset=prompts,
                      processing_class=tokenizer)
    trl.model.train()
    trl.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not running here
    return trl


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    """Six sequences: left-padded prompts, completions of lengths 8, 5, 3, 8, 1 and 0 (right-padded)."""
    g = torch.Generator().manual_seed(11)
    prompt_ids = torch.randint(3, vocab, (6, 5), generator=g)
    prompt_mask = torch.ones(6, 5, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompt_ids[1, :2] = 1
    completion_ids = torch.randint(3, vocab, (6, MAX_COMPLETION), generator=g)
    lengths = torch.tensor([8, 5, 3, 8, 1, 0])
    completion_mask = (torch.arange(MAX_COMPLETION) < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 1)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.tensor([1.0, -0.7, 0.4, -1.2, 0.9, -0.3])}


def _policy_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The completion tokens' log-probabilities at the sampling temperature, from one plain forward pass."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    t = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attention).logits[:, -t - 1:-1].float() / TEMPERATURE
    return logits.log_softmax(-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def _off_policy(logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Old and reference log-probs away from the current ones, with row shifts that push whole sequences past
    the clip range in both directions (so sequence-level clipping happens too)."""
    g = torch.Generator().manual_seed(5)
    shift = torch.tensor([-0.4, 0.4, 0.0, 0.4, -0.1, 0.0])[:, None]
    old = logps.detach() + 0.35 * torch.randn(logps.shape, generator=g) + shift
    ref = logps.detach() + 0.2 * torch.randn(logps.shape, generator=g)
    return old, ref


ORACLE_CASES = [
    pytest.param(loss_type, beta, level, None, True, id=f"{loss_type}-beta{beta}-{level}")
    for loss_type in ("grpo", "dr_grpo", "dapo", "bnpo") for beta in (0.0, 0.04) for level in ("token", "sequence")
] + [
    pytest.param("dapo", 0.04, "token", 1.25, True, id="dapo-delta"),
    pytest.param("grpo", 0.04, "token", None, False, id="grpo-kl-without-bias-correction"),
    pytest.param("grpo", 0.04, "sequence", 1.3, False, id="gspo-delta-kl-without-bias-correction"),
]


@pytest.mark.parametrize("loss_type,beta,level,delta,bias_correction", ORACLE_CASES)
def test_loss_metrics_and_gradients_equal_trl(trainer, loss_type, beta, level, delta, bias_correction):
    model = trainer.model
    batch = _batch(model.config.vocab_size)
    trainer.loss_type, trainer.beta, trainer.importance_sampling_level = loss_type, beta, level
    trainer.epsilon_low, trainer.epsilon_high = EPS_LOW, EPS_HIGH
    trainer.args.delta, trainer.args.use_bias_correction_kl = delta, bias_correction
    params = [p for p in model.parameters() if p.requires_grad]

    with torch.no_grad():
        old, ref = _off_policy(_policy_logps(model, batch))
    mask = batch["completion_mask"]
    inputs = {**batch, "old_per_token_logps": old, "ref_per_token_logps": ref,
              # TRL counts the whole generation batch (steps_per_generation micro-batches) and divides it back
              "num_items_in_batch": mask.sum() * trainer.args.steps_per_generation}
    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_grads = torch.autograd.grad(trl_loss, params)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    loss_fn = PolicyGradientLoss(loss_type=loss_type, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, beta=beta,
                                 importance_sampling_level=level, max_completion_length=MAX_COMPLETION, delta=delta,
                                 use_bias_correction_kl=bias_correction)
    ours, metrics = loss_fn(_policy_logps(model, batch), old, batch["advantages"], mask, ref if beta else None,
                            num_sequences=mask.shape[0], num_tokens=mask.sum())
    grads = torch.autograd.grad(ours, params)
    means = PolicyGradientLoss.finish(metrics)

    assert abs(ours.item() - trl_loss.item()) <= 1e-6, (ours.item(), trl_loss.item())
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads, trl_grads))
    grad_scale = max(b.abs().max().item() for b in trl_grads)
    assert grad_diff <= 1e-6 * max(1.0, grad_scale), (grad_diff, grad_scale)
    names = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"] + (["kl"] if beta else [])
    assert sorted(means) == sorted(names)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    for name in names:
        assert means[name] == pytest.approx(trl_metrics[name], abs=1e-6), name
    assert means["clip_ratio/low_mean"] > 0  # clipping really happened
    # TRL counts the high clip on the ratio after the delta cap: a cap below 1 + epsilon_high hides it
    assert (means["clip_ratio/high_mean"] > 0) == (delta is None or delta > 1 + EPS_HIGH)
    if beta:
        assert means["kl"] > 0


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_equal_trl(trainer, scale_rewards):
    """TRL's own generate-and-score step on three prompt groups: one spread, one all equal, one with an
    unscorable completion (its reward function returned None)."""
    _NEXT_REWARDS[:] = [0.0, 2.0, 3.0, 7.0, 2.0, 2.0, 2.0, 2.0, None, 1.0, 4.0, 1.0]
    trainer.scale_rewards = scale_rewards
    trainer.beta = 0.0  # the loss tests may leave a KL on; the trainer was built without a reference model
    trainer._metrics["train"].clear()
    prompts = [{"prompt": f"What is {i} plus 1?"} for i in range(3) for _ in range(4)]
    trl_out = trainer._generate_and_score_completions(prompts)

    rewards = torch.tensor([math.nan if r is None else r for r in _NEXT_REWARDS])
    advantages, stats = group_advantages(rewards, num_generations=4, scale_rewards=scale_rewards)
    torch.testing.assert_close(advantages, trl_out["advantages"].float(), rtol=0, atol=1e-6)
    assert advantages[8] == 0  # the unscorable completion
    assert stats["zero_std"].tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert stats["frac_reward_zero_std"].item() == pytest.approx(1 / 3)
    assert stats["metrics"] == {"frac_reward_zero_std": pytest.approx(1 / 3)}
    logged = trainer._metrics["train"]
    if scale_rewards != "batch":  # TRL's logged value is per group here; under "batch" it asks of the whole batch
        assert stats["frac_reward_zero_std"].item() == pytest.approx(logged["frac_reward_zero_std"][-1])


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])  # two groups of two
    adv, stats = group_advantages(rewards, num_generations=2, scale_rewards="group")
    s = math.sqrt(2.0)  # sample std of (1, 3)
    torch.testing.assert_close(adv, torch.tensor([-1 / (s + 1e-4), 1 / (s + 1e-4), 0.0, 0.0]))
    assert stats["zero_std"].tolist() == [False, False, True, True]
    adv, _ = group_advantages(rewards, num_generations=2, scale_rewards="none")
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    adv, _ = group_advantages(rewards, num_generations=2, scale_rewards="batch")
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (rewards.std() + 1e-4))


def _synthetic(b: int = 7, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 2, 4, 0, 5, 6, 1])[:b]
    mask = (torch.arange(t) < lengths[:, None]).float()
    logps = -torch.rand(b, t, generator=g) * 3
    shift = torch.tensor([-0.5, 0.5, -0.5, 0.0, 0.5, 0.1, 0.0])[:b, None]  # whole sequences past the clip range
    return {"logps": logps, "old": logps + 0.4 * torch.randn(b, t, generator=g) + shift,
            "ref": logps + 0.3 * torch.randn(b, t, generator=g),
            "adv": torch.tensor([1.0, -0.8, 0.5, 0.3, -1.1, 0.7, -0.2])[:b], "mask": mask}


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_micro_batches_add_up_to_the_full_batch(loss_type, level):
    """Loss and gradient of one batch equal the sums over an uneven 3-way split with the step's global counts;
    the summed metric sums give the full batch's means."""
    d = _synthetic()
    loss_fn = PolicyGradientLoss(loss_type=loss_type, beta=0.05, importance_sampling_level=level,
                                 max_completion_length=6, epsilon_high=0.28)
    n_seq, n_tok = d["mask"].shape[0], d["mask"].sum()

    theta = torch.zeros_like(d["logps"], requires_grad=True)  # stands in for the model's parameters
    full, full_metrics = loss_fn(d["logps"] + theta, d["old"], d["adv"], d["mask"], d["ref"],
                                 num_sequences=n_seq, num_tokens=n_tok)
    (full_grad,) = torch.autograd.grad(full, theta)

    theta_parts = torch.zeros_like(d["logps"], requires_grad=True)
    total, summed = 0.0, {}
    for rows in (slice(0, 3), slice(3, 4), slice(4, 7)):
        part, metrics = loss_fn(d["logps"][rows] + theta_parts[rows], d["old"][rows], d["adv"][rows],
                                d["mask"][rows], d["ref"][rows], num_sequences=torch.tensor(n_seq), num_tokens=n_tok)
        part.backward()
        total = total + part.detach()
        for k, v in metrics.items():
            summed[k] = summed.get(k, 0.0) + v
    assert abs(total.item() - full.item()) <= 1e-6
    torch.testing.assert_close(theta_parts.grad, full_grad, rtol=0, atol=1e-6)
    assert PolicyGradientLoss.finish(summed) == pytest.approx(PolicyGradientLoss.finish(full_metrics), abs=1e-6)
    assert PolicyGradientLoss.finish(full_metrics)["clip_ratio/region_mean"] > 0


def test_on_policy_loss_is_minus_the_mean_advantage():
    """On-policy (old = None) the ratio is 1: the loss is minus the advantage averaged as each type averages."""
    d = _synthetic()
    mask, adv = d["mask"], d["adv"]
    tokens = mask.sum(-1)
    expected = {
        "grpo": -(adv * (tokens > 0)).sum() / 7,
        "dapo": -(adv * tokens).sum() / tokens.sum(),
        "bnpo": -(adv * tokens).sum() / tokens.sum(),
        "dr_grpo": -(adv * tokens).sum() / (7 * 6),
    }
    for loss_type, want in expected.items():
        loss, metrics = PolicyGradientLoss(loss_type, max_completion_length=6)(
            d["logps"], None, adv, mask, num_sequences=7, num_tokens=int(tokens.sum()))
        assert loss.item() == pytest.approx(want.item(), abs=1e-6), loss_type
        assert PolicyGradientLoss.finish(metrics)["clip_ratio/region_mean"] == 0


def test_bf16_log_probs_count_tokens_exactly():
    """301 tokens are not a bf16 number: the loss must still be computed over exact counts."""
    logps = torch.zeros(1, 301, dtype=torch.bfloat16, requires_grad=True)
    loss, metrics = PolicyGradientLoss("grpo")(logps, None, torch.tensor([0.75]), torch.ones(1, 301, dtype=torch.long),
                                               num_sequences=1, num_tokens=301)
    assert loss.dtype == torch.float32 and loss.item() == -0.75
    assert metrics["clip_ratio/low_mean/count"].item() == 301


def test_empty_step_is_zero_not_nan():
    mask = torch.zeros(2, 3)
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        loss, metrics = PolicyGradientLoss(loss_type, max_completion_length=3)(
            torch.zeros(2, 3), None, torch.ones(2), mask, num_sequences=2, num_tokens=0)
        assert loss.item() == 0
        assert all(v == 0 for v in PolicyGradientLoss.finish(metrics).values())


def test_finish_divides_sums_by_their_counts_and_passes_the_rest():
    reduced = {"loss": 0.5, "kl": 3.0, "kl/count": 6.0, "clip_ratio/low_mean": 0.0, "clip_ratio/low_mean/count": 0.0}
    assert PolicyGradientLoss.finish(reduced) == {"loss": 0.5, "kl": 0.5, "clip_ratio/low_mean": 0.0}


def test_mask_truncated_zeroes_truncated_rows():
    mask = torch.ones(3, 4, dtype=torch.long)
    out = mask_truncated(mask, torch.tensor([False, True, False]))
    assert out.dtype == mask.dtype
    assert out.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("kwargs,name", [
    ({"loss_type": "cispo"}, "loss_type"),
    ({"importance_sampling_level": "sentence"}, "importance_sampling_level"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"epsilon_high": -0.1}, "epsilon_high"),
    ({"beta": -1.0}, "beta"),
    ({"delta": 0.0}, "delta"),
    ({"loss_type": "dr_grpo"}, "max_completion_length"),
])
def test_bad_arguments_are_one_line_errors(kwargs, name):
    with pytest.raises(ValueError) as err:
        PolicyGradientLoss(**kwargs)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_missing_reference_and_bad_groups_are_one_line_errors():
    with pytest.raises(ValueError, match="beta") as err:
        PolicyGradientLoss(beta=0.1)(torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2),
                                     num_sequences=1, num_tokens=2)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, scale_rewards="std")
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(torch.zeros(5), 2)
