#!/usr/bin/env bash
# One lmconv-bench run as a SLURM job array: each array task is an independent, preemptible shard
# (no collective communication; a requeued task resumes where it stopped), then one merge.
#
#   sbatch --array=0-15 examples/slurm_array.sh          # 16 shards
#   sbatch --dependency=afterok:<JOBID> --wrap "lmconv-bench merge results/runs/top_half_full"
#
#SBATCH --job-name=lmconv-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail

OUT=results/runs/top_half_full
lmconv-bench run --task top_half --dataset mnist --orders all --profile full \
    --out "$OUT" --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --no-progress

# The last shard to finish may merge (merge refuses, naming the missing shard, until all are done):
lmconv-bench merge "$OUT" --no-progress || echo "not every shard is done yet; merge later"
