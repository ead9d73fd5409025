#!/usr/bin/env bash
# Check a multi-GPU recipe on any machine: mesh, tensor-parallel plan and FSDP2 shards of rank 0,
# built on the meta device for RANKS simulated ranks (default: the recipe's dp x tp x cp). No GPUs,
# no weights, and no hub for the architectures nemo_like knows.
#
#   bash examples/llm_finetune/launch/dry_run.sh -c recipes/llama3_8b/sft_tp2_fsdp4.yaml
#   RANKS=16 bash examples/llm_finetune/launch/dry_run.sh -c recipes/llama3_8b/sft_tp2_fsdp4.yaml \
#       --distributed.dp_size none
set -euo pipefail
args=("$@")
if [ -n "${RANKS:-}" ]; then args+=(--world-size "${RANKS}"); fi
exec python -m nemo_like.cli dry-run "${args[@]}"
