"""NeMo AutoModel's vision-language recipes run here: each YAML under tests/configs/nam_vlm mirrors one of NAM's
``examples/vlm_finetune`` files (its sections, ``_target_``s and fields) and trains 2 steps on a tiny offline VLM,
reading local Parquet copies in the hub sets' shapes (an ``Image`` column and the set's text columns)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO

NAM_VLM_DIR = REPO / "tests" / "configs" / "nam_vlm"
CASES = sorted(p.stem for p in NAM_VLM_DIR.glob("*.yaml"))


def _images(n: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (40, 32), ((37 * i) % 256, (91 * i) % 256, 120)) for i in range(n)]


def _write(folder: Path, columns: dict[str, list], n_train: int = 6, n_val: int = 2) -> str:
    """``train`` / ``validation`` Parquet files, images as ``datasets.Image`` (bytes), as hub sets store them."""
    import datasets

    features = datasets.Features({name: datasets.Image() if name in ("image", "image_id") else datasets.Value("string")
                                  for name in columns})
    folder.mkdir(parents=True)
    for split, rows in (("train", slice(0, n_train)), ("validation", slice(n_train, n_train + n_val))):
        part = {name: values[rows] for name, values in columns.items()}
        datasets.Dataset.from_dict(part, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def nam_vlm_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nam_vlm_data")
    n = 8
    cord = [json.dumps({"gt_parse": {"menu": [{"nm": f"item {i}", "price": str(100 + i)}], "total": {"price": "9"}}})
            for i in range(n)]
    return {"NAM_TEST_RDR": _write(root / "rdr", {"image": _images(n), "text": [f"a plain card, number {i}"
                                                                             for i in range(n)]}),
            "NAM_TEST_CORD": _write(root / "cord", {"image": _images(n), "ground_truth": cord})}


@pytest.mark.parametrize("name", CASES)
def test_nam_vlm_yaml_trains_two_steps(name, nam_vlm_env, tmp_path, monkeypatch, one_thread):
    from nemo_like.config.arg_parser import parse_args_and_load_config
    from nemo_like.recipes.vlm.finetune import FinetuneRecipeForVLM
    from nemo_like.recipes.vlm.vlm_config import VLM_SCHEMA, check_vlm_config

    monkeypatch.chdir(tmp_path)
    for key, value in nam_vlm_env.items():
        monkeypatch.setenv(key, value)
    cfg = parse_args_and_load_config(["--config", str(NAM_VLM_DIR / f"{name}.yaml")],
                                     known_sections=VLM_SCHEMA.override_names)
    check_vlm_config(cfg)
    recipe = FinetuneRecipeForVLM(cfg)
    recipe.setup()
    history = recipe.run_train_validation_loop()["history"]
    assert [h["step"] for h in history] == [0, 1]
    assert all(math.isfinite(float(h["loss"])) and float(h["loss"]) > 0 for h in history)


def test_cord_answers_are_donut_tokens_of_the_first_parse():
    from nemo_like.components.datasets.vlm.datasets import json2token

    assert json2token({"menu": [{"nm": "tea", "price": "3"}, {"nm": "cake"}], "total": {"price": "3"}}) == (
        "<s_total><s_price>3</s_price></s_total><s_menu><s_price>3</s_price><s_nm>tea</s_nm><sep/>"
        "<s_nm>cake</s_nm></s_menu>")
    assert json2token({"text_sequence": "plain"}) == "plain"


def test_every_mirror_names_its_nam_file():
    for path in NAM_VLM_DIR.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith("# Mirrors NeMo AutoModel's examples/vlm_finetune/")
