#!/usr/bin/env bash
# asiarch job demo-c00003-a1: rendered by asiarch, do not edit.
set -euo pipefail
module load cuda/12.4
export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
cd /scratch/exp/candidates/00003-delta/attempt-1
echo asiarch: demo-c00003-a1 starting on "$(hostname)" at "$(date -Is)"
exec /opt/venv/bin/python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=2 -m asiarch.job.train /scratch/exp/candidates/00003-delta/attempt-1/spec.json
