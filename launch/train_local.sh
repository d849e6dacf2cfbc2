#!/usr/bin/env bash
# Train on this machine with N processes (GPUs, or gloo on CPU), no scheduler:
#   launch/train_local.sh 2 body --data shards/PXB184 --run-dir runs/body --preset debug
# (`accelerate launch --cpu --num_processes 2` would start one process; torchrun starts N.)
set -euo pipefail
nproc=${1:?usage: train_local.sh NPROC TASK [a2p train args...]}
shift
exec "${A2P_PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m a2p.cli.train "$@"
