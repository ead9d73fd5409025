"""SQuAD, HellaSwag, agent traces, mock data, nested collate_fn nodes, the THD collater name and ChatDataset's
reasoning mask and shuffle: each checked against an independent tokenization of the expected text."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import build_tiny_tokenizer
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.agent_chat import make_agent_chat_dataset
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset
from nemo_like.components.datasets.llm.hellaswag import HellaSwag
from nemo_like.components.datasets.llm.mock import build_unpacked_dataset
from nemo_like.components.datasets.llm.mock_iterable_dataset import MockIterableDataset
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence
from nemo_like.components.datasets.llm.squad import SquadChatDataset, SquadDataset, make_squad_dataset
from nemo_like.components.datasets.utils import default_collater, packed_sequence_thd_collater
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.recipes.builders.data import build_dataloader, instantiate_dataset, resolve_collate_fn

SQUAD = [{"id": f"q{i}", "title": "Maths", "context": f"{i} plus {i} is {2 * i}.",
          "question": f"What is {i} plus {i}?", "answers": {"text": [f" {2 * i} ", "x"], "answer_start": [10, 0]}}
         for i in range(6)]
HELLA = [{"ind": i, "activity_label": "Maths", "ctx_a": f"What is {i} plus 1?", "ctx_b": "the answer",
          "ctx": f"What is {i} plus 1? the answer", "endings": [f" is {i}.", f" is {i + 1}.", " is 0.", " is 9."],
          "label": "1", "split": "train"} for i in range(5)]
THINK_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def plain_tok():
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    return tok


@pytest.fixture()
def data(tmp_path):
    """Hub-shaped local copies: a SQuAD folder of split files (Parquet and JSONL), HellaSwag JSONL."""
    folder = tmp_path / "squad" / "plain_text"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(SQUAD), folder / "train-00000-of-00001.parquet")
    _jsonl(folder / "validation.jsonl", SQUAD[:2])
    return SimpleNamespace(squad=str(tmp_path / "squad"), squad_jsonl=_jsonl(tmp_path / "squad.jsonl", SQUAD),
                           hella=_jsonl(tmp_path / "hella.jsonl", HELLA), tmp=tmp_path)


def _target(sample) -> list[int]:
    return [t for t in sample["labels"] if t != -100]


def _row(sample) -> list[int]:
    """The unshifted row: input_ids plus the last label."""
    return sample["input_ids"] + [sample["labels"][-1]]


# ---------------------------------------------------------------------------------------------- SQuAD
def test_squad_plain_prompt_answer_layout(data, plain_tok):
    ds = make_squad_dataset(plain_tok, dataset_name=data.squad, split="train")
    assert isinstance(ds, SquadDataset) and len(ds) == 6
    prompt = "Context: 2 plus 2 is 4. Question: What is 2 plus 2? Answer: "
    prompt_ids = plain_tok(prompt)["input_ids"]
    answer_ids = plain_tok("4", add_special_tokens=False)["input_ids"] + [plain_tok.eos_token_id]
    sample = ds[2]
    assert _row(sample) == prompt_ids + answer_ids
    assert sample["labels"] == [-100] * (len(prompt_ids) - 1) + answer_ids
    assert plain_tok.decode(_target(sample)[:-1]) == "4"  # the first answer text, stripped
    assert ds.location(2).endswith("train-00000-of-00001.parquet[2]")


def test_squad_chat_template_user_and_assistant_turns(data, tiny_tokenizer):
    ds = make_squad_dataset(tiny_tokenizer, dataset_name=data.squad_jsonl, split="train[1:3]")
    assert isinstance(ds, SquadChatDataset) and len(ds) == 2
    sample = ds[0]  # row 1
    user = "Context: 1 plus 1 is 2. Question: What is 1 plus 1? Answer: "
    prompt = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    expected = (plain_ids := tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]) + \
        tiny_tokenizer("2<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert _row(sample) == expected
    assert tiny_tokenizer.decode(_target(sample)) == "2<|im_end|>\n"
    assert sample["labels"][: len(plain_ids) - 1] == [-100] * (len(plain_ids) - 1)


def test_squad_split_folder_limit_padding_and_refusals(data, plain_tok):
    assert len(make_squad_dataset(plain_tok, dataset_name=data.squad, split="validation")) == 2
    assert len(make_squad_dataset(plain_tok, dataset_name=data.squad, split="train", limit_dataset_samples=3)) == 3
    padded = make_squad_dataset(plain_tok, dataset_name=data.squad_jsonl, seq_length=128, padding="max_length",
                                fp8=True)
    assert all(len(padded[i]["input_ids"]) == 128 for i in range(len(padded)))
    with pytest.raises(DatasetError, match="no file for split 'test'"):
        make_squad_dataset(plain_tok, dataset_name=data.squad, split="test")
    with pytest.raises(DatasetError, match=r"squad.jsonl:1: the prompt alone is \d+ tokens, not shorter than seq_length 8"):
        make_squad_dataset(plain_tok, dataset_name=data.squad_jsonl, seq_length=8)


def test_squad_bad_row_is_one_line_naming_file_line_and_column(data, plain_tok):
    bad = _jsonl(data.tmp / "bad.jsonl", [SQUAD[0], {**SQUAD[1], "answers": {"text": "4"}}])
    with pytest.raises(DatasetError) as err:
        make_squad_dataset(plain_tok, dataset_name=bad)
    assert f"{bad}:2" in str(err.value) and "'answers'" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- HellaSwag
def test_hellaswag_context_prompt_labelled_ending_target(data, plain_tok):
    ds = HellaSwag(data.hella, plain_tok, split="train", num_samples_limit=3, pad_to_max_length=False)
    assert len(ds) == 3
    ctx_ids = plain_tok(HELLA[2]["ctx"])["input_ids"]
    ending_ids = plain_tok(" is 3.")["input_ids"] + [plain_tok.eos_token_id]  # label "1" -> endings[1]
    sample = ds[2]
    assert _row(sample) == ctx_ids + ending_ids
    assert sample["labels"] == [-100] * (len(ctx_ids) - 1) + ending_ids
    assert plain_tok.decode(_target(sample)[:-1]) == " is 3."


def test_hellaswag_pads_to_a_multiple_of_8_and_names_bad_rows(data, plain_tok):
    ds = HellaSwag(data.hella, plain_tok)
    lengths = {len(ds[i]["input_ids"]) for i in range(len(ds))}
    assert len(lengths) == 1 and lengths.pop() % 8 == 0
    bad = _jsonl(data.tmp / "bad_hella.jsonl", [HELLA[0], {**HELLA[1], "label": ""}])
    with pytest.raises(DatasetError, match=rf"{bad}:2: column 'label'"):
        HellaSwag(bad, plain_tok)


# ---------------------------------------------------------------------------------------------- agent traces
AGENT_ROWS = [
    {"id": 7, "tools": json.dumps([{"type": "function", "function": {"name": "add", "parameters": {}}}]),
     "messages": [{"role": "user", "content": "What is 2 plus 3?"},
                  {"role": "tool_call", "content": json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})},
                  {"role": "tool_response", "content": "5"},
                  {"role": "assistant", "content": "It is 5."}]},
    {"tools": "", "conversations": [{"from": "human", "value": "What is 1 plus 1?"},
                                    {"from": "gpt", "value": "It is 2."}]},
    {"messages": [{"role": "user", "content": "hello"}]},  # no assistant message
]
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c['function'] | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_agent_chat_tool_calls_merged_and_supervised(data, tiny_tokenizer):
    path = _jsonl(data.tmp / "agent.jsonl", AGENT_ROWS)
    ds = make_agent_chat_dataset(tiny_tokenizer, path=path, chat_template=TOOL_TEMPLATE, filter_no_assistant=True)
    assert len(ds) == 2  # the row without an assistant message is left out
    text = tiny_tokenizer.decode(_row(ds[0]))
    assert '<|im_start|>assistant\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>' \
        in text and "<|im_start|>tool\n5<|im_end|>" in text
    assert tiny_tokenizer.decode(_target(ds[0])) == (
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>\nIt is 5.<|im_end|>\n')
    assert tiny_tokenizer.decode(_target(ds[1])) == "It is 2.<|im_end|>\n"
    with pytest.raises(DatasetError, match=rf"{path}:3: the conversation has no assistant"):
        make_agent_chat_dataset(tiny_tokenizer, path=path, chat_template=TOOL_TEMPLATE)


def test_agent_chat_history_truncation_filters_and_split(data, tiny_tokenizer):
    long = {"messages": [m for i in range(6) for m in (
        {"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."})]}
    path = _jsonl(data.tmp / "long.jsonl", [long, AGENT_ROWS[1]])
    whole = make_agent_chat_dataset(tiny_tokenizer, dataset_name=path)
    assert len(whole[0]["input_ids"]) > 40
    cut = make_agent_chat_dataset(tiny_tokenizer, dataset_name=path, seq_length=40, truncate_history=True,
                                  train_on_last_turn_only=True)
    assert len(cut[0]["input_ids"]) <= 40 and tiny_tokenizer.decode(_target(cut[0])) == "It is 10.<|im_end|>\n"
    short = len(whole[1]["input_ids"])
    kept = make_agent_chat_dataset(tiny_tokenizer, dataset_name=path, seq_length=short, filter_overlong=True)
    assert len(kept) == 1 and kept[0] == whole[1]  # the long row is left out, the short one kept
    with pytest.raises(DatasetError, match=rf"{path}:1: \d+ tokens exceed seq_length {short}"):
        make_agent_chat_dataset(tiny_tokenizer, dataset_name=path, seq_length=short)
    assert len(make_agent_chat_dataset(tiny_tokenizer, dataset_name=path, split="train[1:]")) == 1
    with pytest.raises(DatasetError, match="exactly one of dataset_name"):
        make_agent_chat_dataset(tiny_tokenizer)


# ---------------------------------------------------------------------------------------------- ChatDataset
def test_chat_mask_reasoning_content_keeps_the_trace_out_of_the_loss(data, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "What is 2 plus 3?"},
                          {"role": "assistant", "content": "It is 5.", "reasoning_content": "2 plus 3 is 5"}]}]
    path = _jsonl(data.tmp / "think.jsonl", rows)
    trained = ChatDataset(path, tiny_tokenizer, chat_template=THINK_CHATML)
    masked = ChatDataset(path, tiny_tokenizer, chat_template=THINK_CHATML, mask_reasoning_content=True)
    assert _row(trained[0]) == _row(masked[0])  # the same text
    assert "2 plus 3 is 5" in tiny_tokenizer.decode(_row(masked[0]))
    assert tiny_tokenizer.decode(_target(trained[0])) == "<think>2 plus 3 is 5</think>It is 5.<|im_end|>\n"
    assert tiny_tokenizer.decode(_target(masked[0])) == "It is 5.<|im_end|>\n"  # the template shows no empty trace


def test_chat_shuffle_seed_shuffles_before_the_slice(data, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                          {"role": "assistant", "content": f"It is {i + 1}."}]} for i in range(10)]
    path = _jsonl(data.tmp / "many.jsonl", rows)

    def answers(ds):
        return [tiny_tokenizer.decode(_target(ds[i])) for i in range(len(ds))]

    head = answers(ChatDataset(path, tiny_tokenizer, split="train[:5]", shuffle_seed=3))
    tail = answers(ChatDataset(path, tiny_tokenizer, split="train[5:]", shuffle_seed=3))
    plain = answers(ChatDataset(path, tiny_tokenizer, split="train[:5]"))
    assert len(set(head + tail)) == 10 and head != plain
    assert head == answers(ChatDataset(path, tiny_tokenizer, split="train[:5]", shuffle_seed=3))


# ---------------------------------------------------------------------------------------------- mocks
def test_mock_datasets_shapes_and_packing():
    ds = build_unpacked_dataset(num_sentences=8, mean_len=10, std_len=3, vocab_size=50, max_sentence_len=16, seed=1)
    assert len(ds) == 8 and ds[0]["labels"][-1] == 1 and ds[0]["input_ids"][1:] == ds[0]["labels"][:-1]
    assert build_unpacked_dataset(num_sentences=8, seed=1)[3] == build_unpacked_dataset(num_sentences=8, seed=1)[3]
    packed = PackedSequence(ds, 32)
    batch = packed_sequence_thd_collater([packed[0], packed[1]])
    assert batch["attention_mask"].shape == (2, 1, 32, 32) and batch["position_ids"].shape == (2, 32)
    stream = MockIterableDataset(vocab_size=20, seq_len=12, num_samples=3, batch_size=2)
    items = list(stream)
    assert len(items) == 3 and items[0]["input_ids"].shape == (2, 12)
    assert torch.equal(items[0]["labels"][:, :-1], items[0]["input_ids"][:, 1:])
    joined = default_collater(items[:2], pad_seq_len_divisible=16)
    assert joined["input_ids"].shape == (4, 16) and (joined["labels"][:, 11:] == -100).all()


# ---------------------------------------------------------------------------------------------- collaters
def _dist():
    return SimpleNamespace(world_size=1, rank=0, dp_size=1, dp_rank=0)


def test_nested_collate_fn_node_pads_to_a_multiple(data, plain_tok):
    ds = make_squad_dataset(plain_tok, dataset_name=data.squad_jsonl)
    section = ConfigNode({"_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
                          "collate_fn": {"_target_": "nemo_like.components.datasets.utils.default_collater",
                                         "pad_seq_len_divisible": 64}}, path="dataloader")
    loader = build_dataloader(section, ds, 2, True, tokenizer=plain_tok, dist=_dist(), seed=0, ranked=False)
    batch = next(iter(loader))
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["input_ids"].shape[1] >= max(
        len(ds[i]["input_ids"]) for i in range(2))
    string = ConfigNode({"_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
                         "collate_fn": "nemo_like.components.datasets.utils.default_collater"}, path="dataloader")
    assert next(iter(build_dataloader(string, ds, 2, True, tokenizer=plain_tok, dist=_dist(), seed=0,
                                      ranked=False)))["input_ids"].shape[0] == 2
    with pytest.raises(ConfigError, match=r"dataloader.collate_fn.pad_to: not an argument"):
        resolve_collate_fn(ConfigNode({"_target_": "nemo_like.components.datasets.utils.default_collater",
                                       "pad_to": 3}), "dataloader.collate_fn")
    with pytest.raises(ConfigError):
        resolve_collate_fn(ConfigNode({"_target_": "os.system", "command": "true"}), "dataloader.collate_fn")


def test_thd_collater_name_with_packed_and_unpacked_data(data, plain_tok):
    ds = make_squad_dataset(plain_tok, dataset_name=data.squad_jsonl)
    packed = PackedSequence(ds, 256)
    section = ConfigNode({"_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
                          "collate_fn": "nemo_like.components.datasets.utils.packed_sequence_thd_collater"})
    batch = next(iter(build_dataloader(section, packed, 1, True, tokenizer=plain_tok, dist=_dist(), seed=0,
                                       ranked=False)))
    pos = batch["position_ids"][0]
    restarts = int((pos[1:] == 0).sum())
    width = pos.numel()  # the pack without its trailing padding block
    assert batch["attention_mask"].shape == (1, 1, width, width) and width <= 256 and restarts >= 1
    # rows of the second document do not see the first
    second = int((pos[1:] == 0).nonzero()[0]) + 1
    assert not batch["attention_mask"][0, 0, second, :second].any()
    unpacked = packed_sequence_thd_collater([ds[0], ds[1]], pad_token_id=plain_tok.pad_token_id)
    assert unpacked["attention_mask"].shape[-1] == max(len(ds[0]["input_ids"]), len(ds[1]["input_ids"]))
    assert unpacked["position_ids"][0, 0] == 0


def test_dataset_section_without_tokenizer_argument_builds(plain_tok):
    node = ConfigNode({"_target_": "nemo_like.components.datasets.llm.mock_iterable_dataset.MockIterableDataset",
                       "seq_len": 8, "num_samples": 2}, path="dataset")
    assert len(instantiate_dataset(node, tokenizer=plain_tok)) == 2
