#!/usr/bin/env bash
# The body of a2p's training jobs, shared by train_one_node.sbatch and train_multi_node.sbatch.
# Runs one `accelerate launch` per node (an srun step), always with `--resume latest`, so a
# requeued job continues from its last checkpoint. When the trainer stopped because of a signal
# (SLURM's `--signal=TERM@T` before the time limit, or a preemption), the job requeues itself.
#
# Settings (environment variables; sbatch passes the submitting shell's environment):
#   A2P_TASK            face | body | vq | guide | toy                       (required)
#   A2P_RUN_DIR         run directory on a shared file system                (required)
#   A2P_TRAIN_ARGS      more `a2p train` arguments, e.g. "--data /shards/PXB184 --preset paper"
#   A2P_PROCS_PER_NODE  processes per node (default: SLURM_GPUS_ON_NODE, else 1)
#   A2P_MAIN_PORT       rendezvous port on the first node (default 29500)
#   A2P_PYTHON          python of the environment with a2p installed (default: python3)
#   A2P_REQUEUE         1 (default): requeue the job after a signal-triggered save; 0: just exit
set -uo pipefail

: "${A2P_TASK:?set A2P_TASK (face, body, vq, guide)}"
: "${A2P_RUN_DIR:?set A2P_RUN_DIR to the run directory}"
python=${A2P_PYTHON:-python3}
nodes=${SLURM_NNODES:-1}
procs_per_node=${A2P_PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
total=$(( nodes * procs_per_node ))
main_ip=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1)
main_ip=${main_ip:-127.0.0.1}
port=${A2P_MAIN_PORT:-29500}
read -r -a extra <<< "${A2P_TRAIN_ARGS:-}"

# NCCL on InfiniBand / RoCE clusters: uncomment and adapt to your fabric.
# export NCCL_IB_DISABLE=0                 # use InfiniBand
# export NCCL_SOCKET_IFNAME=ib0            # interface for NCCL's bootstrap traffic
# export NCCL_IB_HCA=mlx5                  # which HCAs to use
# export NCCL_DEBUG=WARN                   # INFO when debugging hangs
# export NCCL_ASYNC_ERROR_HANDLING=1       # fail fast instead of hanging on a dead rank
# export TORCH_NCCL_BLOCKING_WAIT=0

echo "a2p job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: ${A2P_TASK} on ${nodes} node(s) x ${procs_per_node} process(es), main ${main_ip}:${port}"

if [ "$total" -gt 1 ]; then
    # One launcher per node; $SLURM_NODEID is expanded on each node, hence the single quotes.
    launch=("$python" -m accelerate.commands.accelerate_cli launch --multi_gpu
        --num_machines "$nodes" --num_processes "$total" --main_process_ip "$main_ip"
        --main_process_port "$port" --rdzv_backend static)
    srun --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
        '"$@" --machine_rank "$SLURM_NODEID" -m a2p.cli.train "${A2P_TASK}" --run-dir "${A2P_RUN_DIR}" --resume latest ${A2P_TRAIN_ARGS:-}' \
        _ "${launch[@]}"
else
    srun --ntasks=1 "$python" -m a2p.cli.train "$A2P_TASK" --run-dir "$A2P_RUN_DIR" --resume latest "${extra[@]}"
fi
rc=$?

# Did the trainer save because of a signal? Its last checkpoint says so (the exit code may be the
# launcher's, not the trainer's 75).
latest_file="$A2P_RUN_DIR/checkpoints/latest"
if [ -f "$latest_file" ] && grep -q '"reason": "preempted"' "$A2P_RUN_DIR/checkpoints/$(cat "$latest_file")/meta.json" 2>/dev/null; then
    if [ "${A2P_REQUEUE:-1}" = "1" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "a2p: stopped by a signal after saving $(cat "$latest_file"); requeueing job ${SLURM_JOB_ID}"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    exit 0
fi
exit "$rc"
