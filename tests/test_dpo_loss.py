"""DPOLoss: each loss type against its paper's formula written out here, per pair, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_like.components.loss.dpo import LOSS_TYPES, DPOLoss

BETA, EPS, GAMMA = 0.3, 0.1, 0.4


def _pairs(n: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logps = lambda: -torch.rand(n, generator=g, dtype=torch.float64) * 40  # noqa: E731
    tokens = lambda: torch.randint(3, 30, (n,), generator=g).to(torch.float64)  # noqa: E731
    chosen_tokens = tokens()
    return {"chosen_logps": logps(), "rejected_logps": logps(), "ref_chosen_logps": logps(),
            "ref_rejected_logps": logps(), "chosen_tokens": chosen_tokens, "rejected_tokens": tokens(),
            "chosen_nll": torch.rand(n, generator=g, dtype=torch.float64) * chosen_tokens}


def _s(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _expected(kind: str, p: dict[str, torch.Tensor], i: int) -> float:
    c, r = float(p["chosen_logps"][i]), float(p["rejected_logps"][i])
    rc, rr = c - float(p["ref_chosen_logps"][i]), r - float(p["ref_rejected_logps"][i])
    lc, lr = float(p["chosen_tokens"][i]), float(p["rejected_tokens"][i])
    d = rc - rr
    if kind == "sigmoid":
        return -(1 - EPS) * math.log(_s(BETA * d)) - EPS * math.log(_s(-BETA * d))
    if kind == "ipo":
        return (rc / lc - rr / lr - 1 / (2 * BETA)) ** 2
    if kind == "hinge":
        return max(0.0, 1 - BETA * d)
    if kind == "robust":
        return ((1 - EPS) * -math.log(_s(BETA * d)) - EPS * -math.log(_s(-BETA * d))) / (1 - 2 * EPS)
    if kind == "apo_zero":
        return (1 - _s(BETA * rc)) + _s(BETA * rr)
    if kind == "apo_down":
        return _s(BETA * rc) + (1 - _s(BETA * d))
    if kind == "simpo":
        return -math.log(_s(BETA * (c / lc - r / lr) - GAMMA))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [k for k in LOSS_TYPES if k != "sft"])
def test_each_pair_loss_is_its_papers_formula(kind):
    p = _pairs()
    smoothing = EPS if kind in ("sigmoid", "robust") else 0.0
    loss, metrics = DPOLoss(beta=BETA, loss_type=kind, label_smoothing=smoothing, gamma=GAMMA)(**p)
    expected = [_expected(kind, p, i) for i in range(5)]
    assert float(loss) == pytest.approx(sum(expected) / 5, rel=1e-12)
    margins = BETA * ((p["chosen_logps"] - p["ref_chosen_logps"]) - (p["rejected_logps"] - p["ref_rejected_logps"]))
    if kind != "simpo":
        assert torch.allclose(metrics["rewards/margins"], margins)


def test_sft_rpo_and_weighted_combinations():
    p = _pairs()
    sft = float(p["chosen_nll"].sum() / p["chosen_tokens"].sum())
    sigmoid = sum(-math.log(_s(BETA * (float(p["chosen_logps"][i] - p["ref_chosen_logps"][i])
                                       - float(p["rejected_logps"][i] - p["ref_rejected_logps"][i]))))
                  for i in range(5)) / 5
    assert float(DPOLoss(beta=BETA, loss_type="sft")(**p)[0]) == pytest.approx(sft, rel=1e-12)
    mixed = DPOLoss(beta=BETA, loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.2])(**p)[0]
    assert float(mixed) == pytest.approx(0.8 * sigmoid + 0.2 * sft, rel=1e-12)
    rpo = DPOLoss(beta=BETA, rpo_alpha=0.5)(**p)[0]
    assert float(rpo) == pytest.approx(sigmoid + 0.5 * sft, rel=1e-12)


def test_micro_batches_add_up_to_the_step_mean():
    """Each micro-batch divides by the step's pair and token counts, so their sum is the whole step's loss."""
    p = _pairs(6, seed=3)
    loss = DPOLoss(beta=BETA, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    whole = loss(**p)[0]
    halves = [loss(**{k: v[s] for k, v in p.items()}, num_pairs=6, num_chosen_tokens=p["chosen_tokens"].sum())[0]
              for s in (slice(0, 2), slice(2, 6))]
    assert float(sum(halves)) == pytest.approx(float(whole), rel=1e-12)


def test_gradients_flow_to_the_policy_only():
    p = _pairs()
    p["chosen_logps"].requires_grad_(True)
    p["rejected_logps"].requires_grad_(True)
    loss, _ = DPOLoss(beta=BETA)(**p)
    loss.backward()
    assert p["chosen_logps"].grad.lt(0).all() and p["rejected_logps"].grad.gt(0).all()  # raise chosen, lower rejected


def test_bad_settings_are_one_line():
    for kwargs, match in [({"loss_type": "kto"}, "loss_type"), ({"beta": 0}, "beta"),
                          ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights"),
                          ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing")]:
        with pytest.raises(ValueError, match=match):
            DPOLoss(**kwargs)
    assert not DPOLoss(loss_type="simpo").needs_reference and DPOLoss().needs_reference
    with pytest.raises(ValueError, match="reference"):
        DPOLoss()(torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("kind, weights, smoothing", [
    ("sigmoid", None, 0.0), ("ipo", None, 0.0), ("hinge", None, 0.0), ("robust", None, 0.1),
    ("apo_zero", None, 0.0), ("apo_down", None, 0.0), (["sigmoid", "sft"], [1.0, 0.3], 0.0),
])
def test_dpo_loss_equals_trls_on_the_same_pairs(tmp_path, tiny_tokenizer, one_thread, kind, weights, smoothing):
    """TRL's DPOTrainer.compute_loss (its tokenization, collator, log-probs and loss) against ours: the
    PreferenceDataset items, the padded collater, sequence_logps and DPOLoss, one policy and one reference."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from conftest import tiny_llama, write_jsonl
    from nemo_like.components.datasets.llm.preference_collater import preference_collater
    from nemo_like.components.datasets.llm.preference_dataset import PreferenceDataset
    from nemo_like.components.loss.sequence_logps import sequence_logps

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus 2?"}],
             "chosen": [{"role": "assistant", "content": f"It is {i + 2}."}],
             "rejected": [{"role": "assistant", "content": f"It is {i + 3} or so."}]} for i in range(4)]
    policy, reference = tiny_llama(len(tiny_tokenizer), 0), tiny_llama(len(tiny_tokenizer), 1)
    types = kind if isinstance(kind, list) else [kind]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, report_to=[], beta=BETA,
                     loss_type=types, loss_weights=weights, label_smoothing=smoothing, use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tiny_tokenizer)
    theirs = trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))

    items = PreferenceDataset(write_jsonl(tmp_path / "pairs.jsonl", rows), tiny_tokenizer, max_length=0)[:4]
    batch = preference_collater(items, pad_token_id=tiny_tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logps, tokens = sequence_logps(policy(**inputs).logits, batch["input_ids"], batch["completion_mask"])
    with torch.no_grad():
        ref_logps, _ = sequence_logps(reference(**inputs).logits, batch["input_ids"], batch["completion_mask"])
    (chosen, rejected), (ref_chosen, ref_rejected) = logps.chunk(2), ref_logps.chunk(2)
    ours, _ = DPOLoss(beta=BETA, loss_type=kind, loss_weights=weights, label_smoothing=smoothing)(
        chosen, rejected, ref_chosen, ref_rejected, chosen_tokens=tokens[:4], rejected_tokens=tokens[4:],
        chosen_nll=-chosen)
    assert abs(float(ours) - float(theirs)) < 1e-5, (float(ours), float(theirs))
