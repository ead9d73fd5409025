"""ChatDataset: exactly the assistant turns carry labels, ShareGPT and tools, bad rows named."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset

THREE_TURNS = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "The answer is 5."},
    {"role": "user", "content": "What is 10 plus 4?"},
    {"role": "assistant", "content": "The answer is 14."},
    {"role": "user", "content": "What is 7 plus 7?"},
    {"role": "assistant", "content": "The answer is 14."},
]
# A ChatML variant that shows tools and tool calls (the test tokenizer's own template ignores them).
TOOL_CHATML = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c['function'] | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]}
TOOL_TURNS = [{"role": "user", "content": "What is 2 plus 3?"}, CALL,
              {"role": "tool", "content": "5"}, {"role": "assistant", "content": "It is 5."}]


def _ds(tmp_path, tok, rows, **kw) -> ChatDataset:
    return ChatDataset(write_jsonl(tmp_path / "chat.jsonl", rows), tok, **kw)


def _expected_supervision(tok, text: str, answer_pattern: str) -> tuple[list[int], list[bool]]:
    """Tokens of the rendered text and, per token, whether it lies inside an assistant answer."""
    spans = [m.span(1) for m in re.finditer(answer_pattern, text, flags=re.S)]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    flags, pos = [], 0
    for token in ids:
        piece = tok.decode([token])
        assert text.startswith(piece, pos)
        flags.append(any(a <= pos < b for a, b in spans))
        pos += len(piece)
    assert pos == len(text)
    return ids, flags


def _supervised_flags(sample: dict) -> tuple[list[int], list[bool]]:
    """Undo the shift: token i+1 of the row is labelled iff labels[i] != -100."""
    ids = sample["input_ids"] + [sample["labels"][-1]]
    return ids, [False] + [label != -100 for label in sample["labels"]]


def test_three_turns_label_exactly_assistant_tokens_and_their_end_of_turn(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    sample = _ds(tmp_path, tok, [{"messages": THREE_TURNS}])[0]
    text = tok.apply_chat_template(THREE_TURNS, tokenize=False)
    expected_ids, expected_flags = _expected_supervision(tok, text, r"<\|im_start\|>assistant\n(.*?<\|im_end\|>\n)")
    ids, flags = _supervised_flags(sample)
    assert ids == expected_ids  # token by token the rendered template
    assert flags == expected_flags
    labelled = [t for t, f in zip(ids, flags) if f]
    assert tok.decode(labelled) == "The answer is 5.<|im_end|>\nThe answer is 14.<|im_end|>\nThe answer is 14.<|im_end|>\n"
    assert labelled.count(tok.eos_token_id) == 3 and tok.eos_token_id == tok.pad_token_id  # end of turn learnt
    assert all(sample["labels"][i] == ids[i + 1] for i in range(len(sample["labels"])) if sample["labels"][i] != -100)


def test_mask_history_keeps_only_the_last_assistant_turn(tmp_path, tiny_tokenizer):
    sample = _ds(tmp_path, tiny_tokenizer, [{"messages": THREE_TURNS}], mask_history=True)[0]
    labelled = [t for t in sample["labels"] if t != -100]
    assert tiny_tokenizer.decode(labelled) == "The answer is 14.<|im_end|>\n"


def test_sharegpt_rows_equal_their_openai_form(tmp_path, tiny_tokenizer):
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"system": THREE_TURNS[0]["content"],
                "conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in THREE_TURNS[1:]]}
    both = _ds(tmp_path, tiny_tokenizer, [sharegpt, {"messages": THREE_TURNS}])
    assert both[0] == both[1]


def test_tools_native_template_and_json_string_tools(tmp_path, tiny_tokenizer):
    rows = [{"messages": TOOL_TURNS, "tools": TOOLS}, {"messages": TOOL_TURNS, "tools": json.dumps(TOOLS)}]
    ds = _ds(tmp_path, tiny_tokenizer, rows, chat_template=TOOL_CHATML)
    assert ds[0] == ds[1]
    ids, flags = _supervised_flags(ds[0])
    text = tiny_tokenizer.decode(ids)
    assert text.startswith('<|im_start|>system\nTools: [{"type": "function"')
    labelled = tiny_tokenizer.decode([t for t, f in zip(ids, flags) if f])
    # Arguments given as an OpenAI JSON string are rendered as an object, not a string in a string.
    assert labelled == ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>\n'
                        "It is 5.<|im_end|>\n")


def test_tools_inlined_when_the_template_ignores_them(tmp_path, tiny_tokenizer):
    ds = _ds(tmp_path, tiny_tokenizer, [{"messages": TOOL_TURNS, "tools": TOOLS}])
    ids, flags = _supervised_flags(ds[0])
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou can call these tools") and '"name": "add"' in text
    labelled = tiny_tokenizer.decode([t for t, f in zip(ids, flags) if f])
    assert labelled.startswith('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>')


def test_chat_template_override_from_a_file_and_seq_length(tmp_path, tiny_tokenizer):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")
    ds = _ds(tmp_path, tiny_tokenizer, [{"messages": THREE_TURNS[:3]}], chat_template=str(template))
    ids, flags = _supervised_flags(ds[0])
    assert tiny_tokenizer.decode(ids).startswith("system: You add numbers.<|im_end|>user: ")
    assert tiny_tokenizer.decode([t for t, f in zip(ids, flags) if f]) == "The answer is 5.<|im_end|>"
    padded = _ds(tmp_path, tiny_tokenizer, [{"messages": THREE_TURNS[:3]}], seq_length=128, padding="max_length",
                 chat_template=str(template))[0]
    assert len(padded["input_ids"]) == 128 and padded["attention_mask"].count(1) == len(ids) - 1
    with pytest.raises(DatasetError, match=r"chat\.jsonl:1: \d+ tokens exceed seq_length 16"):
        _ds(tmp_path, tiny_tokenizer, [{"messages": THREE_TURNS}], seq_length=16)


REJECT_TOOL_ROLE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GOOD = {"messages": THREE_TURNS[1:3]}


@pytest.mark.parametrize(
    "bad, kwargs, pattern",
    [
        ({"prompt": "hi", "answer": "yo"}, {}, r"chat\.jsonl:2: no 'messages' \(or ShareGPT 'conversations'\); the row has \['answer', 'prompt'\]"),
        ({"messages": TOOL_TURNS}, {"chat_template": REJECT_TOOL_ROLE}, r"chat\.jsonl:2: the chat template rejects this conversation .*tool messages are not supported"),
        ({"messages": [{"role": "narrator", "content": "x"}, THREE_TURNS[2]]}, {}, r"chat\.jsonl:2: message 0: unknown role 'narrator'"),
        ({"messages": THREE_TURNS[1:3], "tools": "[{not json"}, {}, r"chat\.jsonl:2: 'tools' is not valid JSON"),
        ({"messages": THREE_TURNS[:2]}, {}, r"chat\.jsonl:2: the conversation has no assistant message"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, {}, r"chat\.jsonl:2: conversations\[0\]: unknown speaker 'alien'"),
    ],
    ids=["missing-messages", "role-rejected-by-template", "unknown-role", "tools-not-json", "no-assistant", "sharegpt-speaker"],
)
def test_bad_rows_name_file_and_row_or_are_skipped_and_counted(tmp_path, tiny_tokenizer, caplog, bad, kwargs, pattern):
    rows = [GOOD, bad, GOOD]
    with pytest.raises(DatasetError, match=pattern) as err:
        _ds(tmp_path, tiny_tokenizer, rows, **kwargs)
    assert "\n" not in str(err.value)
    ds = _ds(tmp_path, tiny_tokenizer, rows, skip_invalid_samples=True, **kwargs)
    assert len(ds) == 2 and ds.skipped == 1 and ds.locations == [f"{tmp_path / 'chat.jsonl'}:1", f"{tmp_path / 'chat.jsonl'}:3"]
    assert "skipped 1 invalid row(s) of 3" in caplog.text


def test_shipped_chat_data_is_what_the_generator_makes(tmp_path, tiny_tokenizer):
    subprocess.run([sys.executable, str(REPO / "tools" / "make_chat_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for split in ("train", "validation"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (REPO / "data" / "chat" / f"{split}.jsonl").read_bytes()
    ds = ChatDataset(str(REPO / "data" / "chat" / "validation.jsonl"), tiny_tokenizer)
    assert len(ds) == 50 and ds.skipped == 0


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sft_chat_recipe_runs_on_a_tiny_model(tmp_path, monkeypatch, tiny_model_dir, packed):
    from nemo_like.recipes.llm.run import main

    monkeypatch.chdir(REPO)
    # packs as long as the tiny model's context; the few longer rows are left out
    extra = ["--packed_sequence.packed_sequence_size", "256", "--packed_sequence.skip_long_samples", "true"] if packed else []
    args = ["--config", "recipes/smollm2_135m/sft_chat.yaml", "--model.pretrained_model_name_or_path", tiny_model_dir,
            "--step_scheduler.max_steps", "1", "--step_scheduler.global_batch_size", "2",
            "--step_scheduler.local_batch_size", "2", "--step_scheduler.val_every_steps", "1",
            "--dataset.limit_dataset_samples", "8", "--validation_dataset.limit_dataset_samples", "4",
            "--checkpoint.checkpoint_dir", str(tmp_path / "ckpt"), "--peft.dim", "4",
            # the tiny tokenizer spells most words letter by letter: cut rows to the tiny model's context
            "--dataset.truncation", "true", "--validation_dataset.truncation", "true", *extra]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "training.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["loss"] > 0


# A template that shows earlier answers differently once a later turn follows (as some reasoning templates do):
# a conversation with two answers does not render turn by turn.
LAST_TURN_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}(earlier) {% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _varied_rows() -> list[dict]:
    """Conversations of many shapes, each shape several times: system or not, one to three turns, tools and
    tool calls, a tool reply, an empty answer, the template's own markers inside a message."""
    rows = []
    for i in range(4):
        turns = [{"role": "user", "content": f"What is {i} plus {i}?"},
                 {"role": "assistant", "content": f"It is {2 * i}."},
                 {"role": "user", "content": f"And {i} times {i}?"},
                 {"role": "assistant", "content": f"It is {i * i}."},
                 {"role": "user", "content": "Thanks."},
                 {"role": "assistant", "content": "" if i == 3 else "You are welcome."}]
        rows += [{"messages": turns[:2]}, {"messages": turns}, {"messages": THREE_TURNS[:1] + turns[:4]},
                 {"messages": [*turns[:2], {"role": "user", "content": f"say <|im_start|>assistant\n{i}"}, turns[3]]},
                 {"messages": TOOL_TURNS, "tools": TOOLS}, {"messages": turns[:2] + TOOL_TURNS},
                 {"messages": [{"role": "user", "content": "hi", "name": f"u{i}"}, *turns[1:2]]}]
    return rows


@pytest.mark.parametrize("template", [None, TOOL_CHATML, LAST_TURN_CHATML], ids=["own", "tools", "not-turn-by-turn"])
def test_one_render_per_conversation_gives_the_items_of_every_prefix_rendered(tmp_path, tiny_tokenizer, monkeypatch,
                                                                               template):
    from nemo_like.components.datasets.llm.turn_split import TurnSplit

    rows = _varied_rows()
    calls = []  # the rows rendered prefix by prefix
    prefix_turns = ChatDataset._prefix_turns
    monkeypatch.setattr(ChatDataset, "_prefix_turns", lambda self, *a: calls.append(a[0]) or prefix_turns(self, *a))
    split = _ds(tmp_path, tiny_tokenizer, rows, chat_template=template, skip_invalid_samples=True,
                cache_dir=str(tmp_path / "split"))
    rendered = len(calls)
    monkeypatch.setattr(TurnSplit, "PROBES", len(rows) + 1)  # every row a probe: every row rendered prefix by prefix
    exact = _ds(tmp_path, tiny_tokenizer, rows, chat_template=template, skip_invalid_samples=True,
                cache_dir=str(tmp_path / "exact"))
    assert len(split) == len(exact) and split.skipped == exact.skipped
    assert split.samples == exact.samples and split.locations == exact.locations
    if template is LAST_TURN_CHATML:  # its multi-turn rows are errors either way, and no row was split
        assert exact.skipped == 20 and split._turns.off and rendered >= len(rows)
    else:  # after the probes, rows of a shape seen are split (a row whose later text holds the marker is not)
        assert split.skipped == 0 and not split._turns.off and rendered < len(rows)
        assert split._turns.marker == "<|im_start|>"
        assert split._turns.prompt == "<|im_start|>assistant\n"
