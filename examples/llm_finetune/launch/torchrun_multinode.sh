#!/usr/bin/env bash
# Launch one node's share of a multi-node fine-tune with torchrun's c10d rendezvous.
# Run the same command on every node (same RDZV_ID and MASTER_ADDR); torchrun assigns the ranks.
#
#   NNODES=2 MASTER_ADDR=node0.example MASTER_PORT=29500 RDZV_ID=sft42 \
#     bash examples/llm_finetune/launch/torchrun_multinode.sh -c recipes/llama3_8b/sft_tp2_fsdp4.yaml
#
# Everything after the script name goes to finetune.py (the recipe and any --section.key overrides).
# With 2 nodes of 8 GPUs and tp_size 2, dp_size: none becomes 8 (the recipe's dp_size 4 must then be
# overridden: --distributed.dp_size none). Keep tp inside a node: it is the innermost mesh dimension.
set -euo pipefail

NNODES="${NNODES:-1}"
if [ -z "${GPUS_PER_NODE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then GPUS_PER_NODE="$(nvidia-smi -L | wc -l)"; else GPUS_PER_NODE=1; fi
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-nemo_like_$(date +%Y%m%d)}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"

# NCCL over InfiniBand/RoCE when present; these are the usual knobs, leave them unset if unsure.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"

exec torchrun \
  --nnodes="${NNODES}" \
  --nproc-per-node="${GPUS_PER_NODE}" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
  --rdzv-id="${RDZV_ID}" \
  --max-restarts="${MAX_RESTARTS:-0}" \
  "${REPO}/examples/llm_finetune/finetune.py" "$@"
