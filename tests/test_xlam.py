"""xLAM function calling: schemas and tool calls from JSON strings, answer-only loss, shipped data, bad rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.xlam import XLAMDataset, make_xlam_dataset, xlam_calls, xlam_tool_to_openai

SHIPPED = REPO / "data" / "xlam"
TOOL = {"name": "get_weather", "description": "Forecast.",
        "parameters": {"city": {"description": "City.", "type": "str"},
                       "days": {"description": "Days ahead.", "type": "int, optional", "default": 1},
                       "tags": {"type": "List[str]"}}}
ROW = {"id": 1, "query": "Weather in Oslo?", "tools": json.dumps([TOOL]),
       "answers": json.dumps([{"name": "get_weather", "arguments": {"city": "Oslo"}}])}


def _write(tmp_path, rows) -> str:
    path = tmp_path / "xlam.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def test_tool_schema_and_calls():
    schema = xlam_tool_to_openai("x", TOOL)["function"]
    assert schema["name"] == "get_weather" and schema["parameters"]["required"] == ["city", "tags"]
    props = schema["parameters"]["properties"]
    assert props["city"]["type"] == "string" and props["days"] == {"type": "integer", "description": "Days ahead.", "default": 1}
    assert props["tags"]["type"] == "array"
    calls = xlam_calls("x", [{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}  # JSON-string arguments


def test_answer_only_loss_on_the_calls(tmp_path, tiny_tokenizer):
    sample = make_xlam_dataset(tiny_tokenizer, _write(tmp_path, [ROW]))[0]
    ids = sample["input_ids"] + [sample["labels"][-1]]
    text = tiny_tokenizer.decode(ids)
    labelled = tiny_tokenizer.decode([t for t in sample["labels"] if t != -100])
    assert '"name": "get_weather"' in text and "<|im_start|>user\nWeather in Oslo?<|im_end|>" in text
    assert labelled == '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>\n'
    assert text.endswith("<|im_start|>assistant\n" + labelled)


def test_shipped_data_is_what_the_generator_makes_and_loads(tmp_path, tiny_tokenizer):
    subprocess.run([sys.executable, str(REPO / "tools" / "make_xlam_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for split in ("train", "validation"):
        assert (tmp_path / f"{split}.json").read_bytes() == (SHIPPED / f"{split}.json").read_bytes()
    train = json.loads((SHIPPED / "train.json").read_text())
    val = json.loads((SHIPPED / "validation.json").read_text())
    assert len(train) == 240 and len(val) == 40 and not {r["query"] for r in train} & {r["query"] for r in val}
    ds = make_xlam_dataset(tiny_tokenizer, dataset_name=str(SHIPPED / "validation.json"))
    assert isinstance(ds, XLAMDataset) and len(ds) == 40 and ds.skipped == 0
    assert any(json.loads(r["answers"]).__len__() == 2 for r in train)  # some rows call two tools


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({**ROW, "answers": "[{'name': 'get_weather'}]"}, r"xlam\.json\[1\]: 'answers' is not valid JSON"),
        ({**ROW, "tools": "not json"}, r"xlam\.json\[1\]: 'tools' is not valid JSON"),
        ({"query": "q", "answers": "[]"}, r"xlam\.json\[1\]: an xLAM row needs \['tools'\]"),
        ({**ROW, "answers": json.dumps([{"arguments": {}}])}, r"xlam\.json\[1\]: answers\[0\] needs a 'name'"),
    ],
    ids=["answer-not-json", "tools-not-json", "missing-tools", "call-without-name"],
)
def test_bad_rows_name_file_and_row_or_are_skipped(tmp_path, tiny_tokenizer, bad, pattern):
    path = _write(tmp_path, [ROW, bad, ROW])
    with pytest.raises(DatasetError, match=pattern):
        make_xlam_dataset(tiny_tokenizer, path)
    ds = make_xlam_dataset(tiny_tokenizer, path, skip_invalid_samples=True)
    assert len(ds) == 2 and ds.skipped == 1


def test_sft_xlam_lora_recipe_runs_on_a_tiny_model(tmp_path, monkeypatch, tiny_model_dir):
    from nemo_like.recipes.llm.run import main

    monkeypatch.chdir(REPO)
    args = ["--config", "recipes/smollm2_135m/sft_xlam_lora.yaml", "--model.pretrained_model_name_or_path", tiny_model_dir,
            "--step_scheduler.max_steps", "1", "--step_scheduler.global_batch_size", "2",
            "--step_scheduler.local_batch_size", "2", "--dataset.limit_dataset_samples", "4",
            "--dataset.seq_length", "none", "--validation_dataset.seq_length", "none",
            "--validation_dataset.limit_dataset_samples", "2", "--checkpoint.checkpoint_dir", str(tmp_path / "ckpt"),
            "--peft.dim", "4",
            # the tiny tokenizer spells words letter by letter: rows run past the tiny model's context on purpose
            "--dataset.max_length", "0", "--validation_dataset.max_length", "0"]
    assert main(args) == 0
    assert (tmp_path / "ckpt" / "epoch_0_step_0" / "model" / "adapter_config.json").exists()
