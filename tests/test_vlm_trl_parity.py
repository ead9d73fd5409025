"""The VLM recipe's training step against TRL's SFTTrainer: one optimizer step of each, from the same weights on
the same tokens, gives the same loss (1e-5), gradient norm and updated weights (1e-6), for each tiny architecture.

Two label masks are compared:

* full sequence, TRL's default for image-text data (``assistant_only_loss=False``): its
  ``DataCollatorForVisionLanguageModeling`` labels every non-padding token, image placeholder tokens included
  (only ``attention_mask == 0`` becomes -100). Our step takes that very batch in our pre-shifted contract:
  every per-token tensor loses its last position and the labels shift left one place.
* assistant answers only, what our collater builds by design. TRL builds that mask from transformers'
  assistant-token mask, which needs ``{% generation %}`` markers in the chat template; the tiny models' ChatML
  template has none and is not one TRL knows how to patch, so TRL refuses it (a ValueError). Given a copy of
  the template with the markers, TRL's labels equal our collater's token for token, and the steps agree.

TRL normalises the summed token loss by the label tokens after its shift, as we do; the step clips the gradient
to norm 1 on both sides, so the clipping is compared too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny_vlm/sft_shapes.yaml"
ROWS = 6  # the first six training rows: one-turn and two-turn conversations of different lengths
ARCHS = ("idefics3", "llava", "qwen2_vl")
# (our optimizer section, TRL's optim, learning rate). AdamW's first update is lr * g / (|g| + eps): where a
# gradient is near zero it is lr / eps times the float32 rounding of the gradient (1.7e-5 for Qwen2-VL's projector
# at the default eps 1e-8, 7e-7 at 1e-6, while the loss and norm agree to the last digit), so both use eps 1e-5.
ADAM_EPS = 1e-5
OPTIMIZERS = {"sgd": ({"_target_": "torch.optim.SGD", "lr": 0.1}, "sgd", 0.1),
              "adamw": ({"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "eps": ADAM_EPS,
                         "weight_decay": 0.0}, "adamw_torch", 1e-3)}


def _items() -> list[dict[str, Any]]:
    from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset

    data = VLMConversationDataset(str(REPO / "data/vlm/shapes/train.jsonl"), limit_dataset_samples=ROWS)
    return [data[i] for i in range(ROWS)]


def _trl_row(item: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational image row: image placeholders in the messages, the images beside them."""
    images = [p["image"] for m in item["conversation"] for p in m["content"] if p["type"] == "image"]
    messages = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p
                                                for p in m["content"]]} for m in item["conversation"]]
    return {"messages": messages, "images": images}


def _marked_template(template: str) -> str:
    """The tiny ChatML template with each assistant message (text and ``<|im_end|>``, not the newline after it)
    between ``{% generation %}`` markers, so transformers can return TRL the assistant-token mask."""
    head, rest = template.split("\n", 1)
    body, tail = rest.split("<|im_end|>\n{% endfor %}", 1)
    return (f"{head}\n{{% if message['role'] == 'assistant' %}}{{% generation %}}{body}<|im_end|>"
            f"{{% endgeneration %}}{{% else %}}{body}<|im_end|>{{% endif %}}{{{{ '\\n' }}}}{{% endfor %}}{tail}")


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _trl_step(arch: str, tmp_path: Path, optim: str, lr: float, assistant_only: bool) -> dict[str, Any]:
    """One step of TRL's SFTTrainer on the rows in order: the batch its collator made, its log, weights before and
    after."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from nemo_like._transformers.processor import load_processor
    from nemo_like._transformers.tiny_vlm import tiny_vlm_dir

    directory = tiny_vlm_dir(arch)
    processor = load_processor(directory)  # TRL's own: a chat_template_path replaces its template
    template = None
    if assistant_only:
        template = tmp_path / "marked.jinja"
        template.write_text(_marked_template(processor.chat_template))
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=ROWS, max_steps=1,
                     learning_rate=lr, optim=optim, adam_epsilon=ADAM_EPS, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_length=None,
                     assistant_only_loss=assistant_only,
                     chat_template_path=str(template) if template else None, train_sampling_strategy="sequential",
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=False, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([_trl_row(i) for i in _items()]),
                         processing_class=processor)
    batches: list[dict[str, Any]] = []
    collate = trainer.data_collator

    def recorded(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batches.append(collate(examples))
        return batches[-1]

    trainer.data_collator = recorded
    before = _weights(model)
    trainer.train()
    assert len(batches) == 1
    log = next(h for h in trainer.state.log_history if "loss" in h)
    return {"batch": {k: v.clone() for k, v in batches[0].items()}, "log": log, "before": before,
            "after": _weights(model)}


def _recipe(arch: str, tmp_path: Path, optimizer: dict[str, Any]) -> Any:
    """The tiny-VLM recipe for one step: ``optimizer``, a constant learning rate, clipping at 1, no validation."""
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.vlm.finetune import FinetuneRecipeForVLM

    cfg = load_yaml_config(RECIPE)
    for key in ("lr_scheduler", "validation_dataset", "validation_dataloader"):
        del cfg[key]
    settings = {"model.pretrained_model_name_or_path": f"nemo-like/tiny-{arch.replace('_', '-')}",
                "optimizer": optimizer, "clip_grad_norm.max_norm": 1.0, "dataset.limit_dataset_samples": ROWS,
                "step_scheduler.global_batch_size": ROWS, "step_scheduler.local_batch_size": ROWS,
                "step_scheduler.max_steps": 1, "step_scheduler.val_every_steps": None,
                "checkpoint.enabled": False, "checkpoint.checkpoint_dir": str(tmp_path / "ckpt")}
    for key, value in settings.items():
        cfg.set_by_path(key, value)
    recipe = FinetuneRecipeForVLM(cfg)
    recipe.setup()
    return recipe


def _pre_shifted(batch: dict[str, Any]) -> dict[str, Any]:
    """TRL's unshifted batch in our contract: logits[t] predicts labels[t]."""
    shape = batch["input_ids"].shape
    out = {k: v[:, :-1] if isinstance(v, torch.Tensor) and v.shape == shape else v for k, v in batch.items()}
    out["labels"] = batch["labels"][:, 1:]
    return out


def _assert_same_step(ours: dict[str, Any], model: torch.nn.Module, theirs: dict[str, Any]) -> None:
    """Same loss (1e-5), gradient norm before clipping (1e-5 relative) and weights after the step (1e-6)."""
    log = theirs["log"]
    assert abs(ours["loss"] - log["loss"]) <= 1e-5, (ours["loss"], log["loss"])
    assert abs(ours["grad_norm"] - log["grad_norm"]) <= 1e-5 * log["grad_norm"], (ours["grad_norm"], log)
    after = _weights(model)
    assert sorted(after) == sorted(theirs["after"])
    moved = max((theirs["after"][n] - theirs["before"][n]).abs().max().item() for n in after)
    worst = max((after[n] - theirs["after"][n]).abs().max().item() for n in after)
    assert moved > 1e-4 and worst <= 1e-6, (moved, worst)


@pytest.mark.parametrize("arch, optimizer", [(arch, "sgd") for arch in ARCHS] + [("idefics3", "adamw")])
def test_full_sequence_loss_step_equals_trl_sft_trainer(arch, optimizer, tmp_path):
    """TRL's full-sequence batch (image tokens labelled, padding not) through our step gives TRL's step."""
    from nemo_like.components.datasets.vlm.collate_fns import default_collate_fn

    ours_opt, trl_opt, lr = OPTIMIZERS[optimizer]
    theirs = _trl_step(arch, tmp_path, trl_opt, lr, assistant_only=False)
    batch = theirs["batch"]
    assert torch.equal(batch["labels"] != -100, batch["attention_mask"] == 1)  # every real token, images included
    recipe = _recipe(arch, tmp_path, ours_opt)
    start = _weights(recipe.model)
    assert all(torch.equal(start[n], w) for n, w in theirs["before"].items())
    mine = default_collate_fn(_items(), recipe.processor)  # the same tokens; its labels a subset of TRL's
    shifted = _pre_shifted(batch)
    assert torch.equal(mine["input_ids"], shifted["input_ids"])
    answers = mine["labels"] != -100
    assert torch.equal(mine["labels"][answers], shifted["labels"][answers])
    assert answers.sum() < (shifted["labels"] != -100).sum()
    ours = recipe._run_train_optim_step([shifted])
    assert ours["num_label_tokens"] == int(batch["attention_mask"].sum()) - ROWS  # each row's first token: no label
    _assert_same_step(ours, recipe.model, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_assistant_only_labels_are_trl_s_and_the_step_equals_trl_sft_trainer(arch, tmp_path):
    """Our collater's batch is TRL's assistant-only batch in our contract, and our step on it gives TRL's step."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from nemo_like._transformers.processor import load_processor
    from nemo_like._transformers.tiny_vlm import tiny_vlm_dir
    from nemo_like.components.datasets.vlm.collate_fns import default_collate_fn

    ours_opt, trl_opt, lr = OPTIMIZERS["sgd"]
    directory = tiny_vlm_dir(arch)
    plain = SFTConfig(output_dir=str(tmp_path / "refused"), assistant_only_loss=True, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="not training-compatible"):  # the unmarked template
        SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(directory), args=plain,
                   train_dataset=Dataset.from_list([_trl_row(i) for i in _items()[:1]]),
                   processing_class=load_processor(directory))
    theirs = _trl_step(arch, tmp_path, trl_opt, lr, assistant_only=True)
    recipe = _recipe(arch, tmp_path, ours_opt)
    batch = default_collate_fn(_items(), recipe.processor)
    want = _pre_shifted(theirs["batch"])
    assert sorted(batch) == sorted(want)
    assert all(torch.equal(batch[k], want[k]) for k in batch), [k for k in batch if not torch.equal(batch[k], want[k])]
    ours = recipe._run_train_optim_step([batch])
    _assert_same_step(ours, recipe.model, theirs)
