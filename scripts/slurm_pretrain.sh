#!/usr/bin/env bash
# Multi-node ASiT pretraining under Slurm: one torchrun per node, rendezvous on the first node.
#   sbatch scripts/slurm_pretrain.sh configs/pretrain/base_audioset.yaml [key=value ...]
#SBATCH --job-name=asit-pretrain
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_pretrain.sh CONFIG [key=value ...]}
shift
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Re-submitting the same job resumes from OUTPUT_DIR/checkpoint.pt automatically.
srun torchrun \
  --nnodes="$SLURM_NNODES" --nproc_per_node="$SLURM_GPUS_PER_NODE" \
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD_NODE:29500" \
  -m pretrain --config "$CONFIG" "$@"
