"""The throughput harness in --quick mode: every contender runs, the report has the promised shape.

Only the format and the bookkeeping are checked; speed is measured by the benchmark itself,
never asserted in a timed test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, packed_row

pytestmark = pytest.mark.slow

RUNNERS = {"nemo_like_padded", "nemo_like_packed", "hf_trainer", "trl_defaults", "trl_tuned", "trl_padding_free"}
LINE = re.compile(r"^ratio (nemo_like_padded\.)?[a-z_]+_vs_(hf_trainer|trl_defaults|trl_tuned|trl_padding_free) \d+\.\d\d$")


def test_quick_benchmark_runs_every_contender_and_reports_ratios(tmp_path):
    results, doc = tmp_path / "results", tmp_path / "performance.md"
    doc.write_text("# Performance\n\nprose stays\n\n<!-- sft_throughput:start -->\nold\n<!-- sft_throughput:end -->\n\ntail stays\n")
    cmd = [sys.executable, "benchmarks/sft_throughput.py", "--quick", "--results-dir", str(results),
           "--markdown", str(doc), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    out = proc.stdout.strip().splitlines()
    ratio_lines = [line for line in out if line.startswith("ratio ")]
    assert ratio_lines and out[-len(ratio_lines):] == ratio_lines  # the run ends with them
    assert all(LINE.match(line) for line in ratio_lines), ratio_lines
    for metric in ("label_tokens_per_s", "peak_rss"):
        for baseline in ("hf_trainer", "trl_defaults"):
            assert any(line.startswith(f"ratio {metric}_vs_{baseline} ") for line in ratio_lines)

    (path,) = results.glob("*-quick.json")
    result = json.loads(path.read_text())
    assert {r["runner"] for r in result["runs"]} == RUNNERS
    for run in result["runs"]:
        for key in ("label_tokens_per_s", "tokens_per_s", "s_per_step", "peak_rss", "final_loss", "mfu"):
            assert run[key] > 0, (run["runner"], key, run[key])
    # Same work: the padded contenders see the very same documents and label tokens; the HF trainers shift
    # inside the model, so they also read each document's last token, which the pre-shifted pair leaves out.
    padded = {r["runner"]: r for r in result["runs"] if r["runner"] in ("nemo_like_padded", "hf_trainer", "trl_defaults")}
    assert len({(r["documents"], r["label_tokens"]) for r in padded.values()}) == 1, padded
    ours, hf = padded["nemo_like_padded"], padded["hf_trainer"]
    assert hf["tokens"] - ours["tokens"] == ours["documents"] and padded["trl_defaults"]["tokens"] == hf["tokens"]
    losses = [r["final_loss"] for r in result["runs"]]
    assert max(losses) / min(losses) < 1.05, losses
    free = next(r for r in result["runs"] if r["runner"] == "trl_padding_free")  # the padded rows, laid end to end
    assert free["documents"] == ours["documents"] and free["tokens"] == hf["tokens"], free
    assert set(result["ratios"]["nemo_like_packed"]) == {"hf_trainer", "trl_defaults", "trl_tuned", "trl_padding_free"}
    assert result["ceiling"]["ceiling_gflops"] > 0 and result["workload"]["model"] == "tiny"

    text = doc.read_text()
    assert "prose stays" in text and "tail stays" in text and "old" not in text
    assert "| (b) nemo_like, packed |" in text and "benchmarks/sft_throughput.py --quick" in text


def test_documents_of_a_packed_batch_leave_out_its_padding():
    """The harness's bookkeeping: a batch of two packs of unequal length, the shorter padded token by token."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runners import documents

    from nemo_like.components.datasets.utils import packed_sequence_collater

    batch = packed_sequence_collater([packed_row([9, 4, 6], padding=5), packed_row([3, 5], padding=8)], pad_token_id=0)
    assert documents(batch) == [9, 4, 6, 3, 5]
