"""Launching for real: torchrun with 2 ranks runs the recipe end to end, the 8B TP2 x FSDP4 recipe
passes its dry run here (meta device, 8 simulated ranks), and the launch scripts parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, addition_rows, write_jsonl
from nemo_like.components.distributed.fork_launcher import run_on_ranks

LAUNCH = REPO / "examples" / "llm_finetune" / "launch"
RECIPE_8B = str(REPO / "recipes" / "llama3_8b" / "sft_tp2_fsdp4.yaml")


@pytest.mark.slow
def test_torchrun_two_ranks_runs_the_recipe_end_to_end(tmp_path, tiny_model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TEST_MODEL_DIR=tiny_model_dir, TEST_CKPT_DIR=str(tmp_path / "ckpt"),
               TEST_TRAIN_JSONL=write_jsonl(tmp_path / "train.jsonl", addition_rows(16)),
               TEST_VAL_JSONL=write_jsonl(tmp_path / "val.jsonl", addition_rows(6, offset=5)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "examples/llm_finetune/finetune.py",
           "--config", "tests/configs/tiny_sft_dist.yaml"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP2 over 2 ranks" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    last = tmp_path / "ckpt" / (tmp_path / "ckpt" / "LATEST").read_text().strip() / "model"
    assert (last / ".metadata").is_file() and (last / "consolidated" / "config.json").is_file()


def _dry_run(argv: list[str]) -> dict:
    from nemo_like.config.arg_parser import parse_args_and_load_config
    from nemo_like.recipes.llm.dry_run import dry_run_recipe

    report = dry_run_recipe(parse_args_and_load_config(argv))
    by_name = {r["name"]: r for r in report["parameters_by_name"]}
    return {"plan": report["plan"].shape, "total": report["parameters"], "local": report["local_parameters"],
            "memory": report["memory_gib"], "grad_acc": report["grad_acc_steps"],
            "q_proj": by_name["model.layers.0.self_attn.q_proj.weight"],
            "o_proj": by_name["model.layers.0.self_attn.o_proj.weight"],
            "norm": by_name["model.layers.0.input_layernorm.weight"]}


def test_llama3_8b_tp2_fsdp4_recipe_passes_its_dry_run():
    r = run_on_ranks(_dry_run, 1, ["--config", RECIPE_8B], init_process_group=False, timeout_s=240)[0]
    assert r["plan"] == (1, 4, 1, 2) and r["grad_acc"] == 4
    assert 8.0e9 < r["total"] < 8.1e9 and abs(r["local"] * 8 - r["total"]) / r["total"] < 1e-3  # 1/8 each
    assert r["q_proj"]["local"] == (512, 4096) and r["q_proj"]["placements"][-1] == "S(0)"  # colwise on tp
    assert r["o_proj"]["local"] == (1024, 2048) and r["o_proj"]["placements"] == ("S(0)", "S(1)")  # rowwise on tp
    assert r["norm"]["placements"][-1] == "R"  # sequence-parallel norms: replicated weights
    assert 14 < r["memory"]["total"] < 16  # fp32 weights + grads + AdamW, / 8


def test_dry_run_reports_a_bad_layout_in_one_line(capsys):
    from nemo_like.cli import dry_run_main as main

    assert main(["--config", RECIPE_8B, "--distributed.tp_size", "3", "--distributed.dp_size", "none",
                 "--world-size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: distributed.tp_size * cp_size = 3 * 1 does not divide the 8 ranks"


@pytest.mark.parametrize("script", ["torchrun_multinode.sh", "slurm_multinode.sbatch", "dry_run.sh"])
def test_launch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True).returncode == 0
