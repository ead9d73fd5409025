"""Quick qualitative checks: load a checkpoint (merged or base + adapter) and answer prompts greedily.

Numbers from lm-eval say how often a model is right; reading a few answers says how it is
wrong. Prompts go through the tokenizer's chat template, as in training, unless told otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components.eval.lm_eval_harness import resolve_checkpoint


def load_for_generation(
    checkpoint: str | None,
    peft: str | None = None,
    use_adapter: bool = False,
    base: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for any checkpoint ``nemo-like eval`` accepts; an adapter goes through HF PEFT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_checkpoint(checkpoint, peft=peft, use_adapter=use_adapter, base=base)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(target.pretrained, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(target.pretrained)
    if target.peft:
        from nemo_like.components.loggers.optional import import_optional

        peft_lib = import_optional("peft", "peft", "generate --peft")
        model = peft_lib.PeftModel.from_pretrained(model, target.peft)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 128,
    use_chat_template: bool = True,
    system: str | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to ``prompts`` (left-padded batches), special tokens and surrounding space removed."""
    templated = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
    texts = []
    for prompt in prompts:
        if templated:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        else:
            texts.append(prompt)
    if tokenizer.pad_token is None:  # batching needs a pad token; the end-of-text token is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    answers: list[str] = []
    try:
        tokenizer.padding_side = "left"
        for start in range(0, len(texts), batch_size):
            # The template already holds any special tokens the model expects.
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=not templated).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad_id)
            for row in out[:, batch["input_ids"].shape[1] :]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return answers
