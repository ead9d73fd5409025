"""The documentation site builds, and what its pages show works.

- ``mkdocs build --strict`` passes (broken links, missing pages and API references fail it);
- the generated reference pages equal what ``tools/gen_config_reference.py`` writes, so every recipe
  field and every ``ConfigError`` / ``DatasetError`` / ``CheckpointError`` message in the code is listed;
- every ```yaml block in ``docs/`` loads with the library's YAML loader; a recipe (or a part of one,
  merged into a shipped recipe of its method) passes that method's config check; a ``tuning:`` file
  passes the tune check;
- every ```python block runs in a fresh interpreter from the repository root;
- every ```json block parses, and every shipped path a page names exists.

Conventions, written as an HTML comment on the line before a fenced block:
``<!-- docs-test: skip -->`` (not run: e.g. needs a GPU), ``<!-- docs-test: parse-only -->`` (YAML that
is loaded but is not a recipe), ``<!-- docs-test: expect-error "TEXT" -->`` (a YAML whose check must
fail with a message containing TEXT). Exceptions are kept few by a test.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

# The shipped recipe a partial snippet of each method is merged into before it is checked.
BASE_RECIPES = {
    "sft": "recipes/smollm2_135m/sft_lora.yaml",
    "dpo": "recipes/smollm2_135m/dpo_lora.yaml",
    "grpo": "recipes/smollm2_135m/grpo_arithmetic.yaml",
    "vlm": "recipes/tiny_vlm/sft_shapes.yaml",
}
FULL_RECIPE = {"model", "dataset", "optimizer", "step_scheduler"}
MAX_SKIPPED = 2
MAX_PARSE_ONLY = 4

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*docs-test:\s*(?P<kind>skip|parse-only|expect-error)\s*(?:\"(?P<arg>[^\"]*)\")?\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    mark: str | None
    arg: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS).as_posix()}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = _MARK.search(before)
            indent = len(match.group("indent"))
            body = "\n".join(x[indent:] for x in match.group("body").splitlines())
            found.append(Block(page, line, match.group("lang"), body, mark and mark.group("kind"),
                               mark and mark.group("arg")))
    return found


BLOCKS = _blocks()
YAML_BLOCKS = [b for b in BLOCKS if b.lang in ("yaml", "yml")]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
JSON_BLOCKS = [b for b in BLOCKS if b.lang == "json"]


# ------------------------------------------------------------------------------------------------ site


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "peft" / "index.html").read_text(encoding="utf-8")
    assert "PeftConfig" in api and "apply_lora_to_linear_modules" in api


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.relative_to(DOCS).as_posix() for p in PAGES if p.relative_to(DOCS).as_posix() not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def _generator():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return importlib.import_module("gen_config_reference")
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_generated_reference_pages_are_current():
    gen = _generator()
    for path, text in gen.pages().items():
        assert path.is_file() and path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(REPO)} is out of date: run python tools/gen_config_reference.py")


def test_every_typed_field_is_in_the_configuration_reference():
    from nemo_like.cli_info import METHOD_SCHEMAS, section_fields

    page = (DOCS / "reference" / "configuration.md").read_text(encoding="utf-8")
    for method, (module, name) in METHOD_SCHEMAS.items():
        schema = getattr(importlib.import_module(module), name)
        for section in schema.section_names | set(schema.refused):
            assert f"`{section}`" in page, (method, section)
        for section in schema.typed:
            _, fields = section_fields(section, method)
            for field, _, _ in fields:
                assert f"| `{field}` |" in page, (method, section, field)
    assert "(not documented in the source)" not in page, "give the field a comment or an entry in MEANINGS"
    stale = [key for key in _generator().MEANINGS if f"| `{key.split('.', 1)[1]}` |" not in page]
    assert not stale, f"MEANINGS entries for fields that no longer exist: {stale}"


def test_every_error_message_site_is_in_the_error_page():
    gen = _generator()
    page = (DOCS / "reference" / "errors.md").read_text(encoding="utf-8")
    sites = gen.error_sites()
    assert len(sites) > 300  # the scan found the raise sites at all
    missing = [(rel, text) for rel, _, text in sites if text not in page]
    assert not missing, missing[:5]
    unparsed = [(rel, text) for rel, _, text in sites if text.startswith("(message built at run time")]
    assert len(unparsed) <= 10, unparsed  # messages the scan cannot read stay few; each is listed with its expression


def test_paths_named_in_the_docs_exist():
    pattern = re.compile(r"(?<![\w/.])((?:recipes|examples|tools|benchmarks|tests)/[\w./-]+\.(?:ya?ml|py|sh|sbatch))\b")
    missing = []
    for page in PAGES:
        for path in set(pattern.findall(page.read_text(encoding="utf-8"))):
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(DOCS)}: {path}")
    assert not missing, missing


def test_commands_named_in_the_docs_exist():
    from nemo_like.cli import COMMANDS

    named = set()
    for page in PAGES:
        named |= set(re.findall(r"nemo-like ([a-z][a-z-]+)", page.read_text(encoding="utf-8")))
    named -= {"tiny"}  # nemo-like/tiny-* model ids
    assert named <= set(COMMANDS), named - set(COMMANDS)


# ------------------------------------------------------------------------------------------ exceptions


def test_snippet_exceptions_are_few():
    skipped = [b.id for b in BLOCKS if b.mark == "skip"]
    parse_only = [b.id for b in BLOCKS if b.mark == "parse-only"]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert len(parse_only) <= MAX_PARSE_ONLY, parse_only
    assert len(YAML_BLOCKS) >= 25 and len(PYTHON_BLOCKS) >= 4


# ------------------------------------------------------------------------------------------------ yaml


def _deep_merge(base: dict, part: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "_target_" not in value:
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and value.get("_target_") == out[key].get(
                "_target_"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _method_of(data: dict) -> str:
    from nemo_like.cli_info import method_of

    return method_of(data)


def _check_recipe(data: dict, tmp_path: Path) -> str:
    """The method's config check on ``data`` (merged into its method's shipped recipe unless it is whole)."""
    from nemo_like.recipes.llm.run import METHODS, load_method_config

    method = _method_of(data)
    if not FULL_RECIPE <= set(data):
        base = yaml.safe_load((REPO / BASE_RECIPES[method]).read_text(encoding="utf-8"))
        data = _deep_merge(base, data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    entry = "sft" if method == "vlm" else method
    checked, cfg = load_method_config(["--config", str(path)], None, entry)
    module, _, check = METHODS[checked][:3]
    getattr(importlib.import_module(module), check)(cfg, 1)
    return checked


def _check_tune(block: Block, tmp_path: Path) -> None:
    from nemo_like.cli_tune import load_tune_config

    path = tmp_path / "tune.yaml"
    path.write_text(block.body, encoding="utf-8")
    load_tune_config(["-c", str(path)])


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.id)
def test_yaml_snippet(block, tmp_path, monkeypatch):
    from nemo_like.config.errors import ConfigError
    from nemo_like.config.loader import load_yaml_config

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("CKPT_ROOT", str(tmp_path))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    path = tmp_path / "snippet.yaml"
    path.write_text(block.body, encoding="utf-8")
    load_yaml_config(path)  # the library's loader: syntax, duplicate keys, references
    data = yaml.safe_load(block.body)
    assert isinstance(data, dict), f"{block.id}: a YAML snippet is a mapping of sections"
    if block.mark == "parse-only":
        return
    if "tuning" in data:
        pytest.importorskip("optuna")
        _check_tune(block, tmp_path)
        return
    if block.mark == "expect-error":
        with pytest.raises(ConfigError, match=re.escape(block.arg or "")):
            _check_recipe(data, tmp_path)
        return
    _check_recipe(data, tmp_path)


# ---------------------------------------------------------------------------------------------- python


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.mark != "skip"], ids=lambda b: b.id)
def test_python_snippet(block, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), "NEMO_LIKE_DATASETS_CACHE": str(tmp_path / "tokens"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", block.body], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"{block.id}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=lambda b: b.id)
def test_json_snippet(block):
    json.loads(block.body)
