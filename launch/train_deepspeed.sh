#!/usr/bin/env bash
# Train with the `deepspeed` launcher on this node (or on the hosts of a hostfile):
#   launch/train_deepspeed.sh 8 face --data shards/PXB184 --run-dir runs/face --deepspeed ds_configs/zero2.json
# Set A2P_HOSTFILE for several nodes (DeepSpeed's "host slots=N" format).
set -euo pipefail
gpus=${1:?usage: train_deepspeed.sh GPUS_PER_NODE TASK [a2p train args...]}
shift
hosts=()
if [ -n "${A2P_HOSTFILE:-}" ]; then hosts=(--hostfile "$A2P_HOSTFILE"); fi
exec deepspeed "${hosts[@]}" --num_gpus "$gpus" --module a2p.cli.train "$@"
