#!/bin/bash
# SLURM batch script: start a Ray head on the first node and workers on the others, then submit
# ray_jobs/ensemble.py as a Ray job. Store and EXP on the shared file system (same path on every node).
#   sbatch cluster/slurm-ensemble.sh cfg.toml /shared/stores/camels.zarr /shared/runs/exp1
#SBATCH --job-name=rootzone-ensemble
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=1
#SBATCH --time=12:00:00
#SBATCH --output=rootzone-ensemble-%j.log
set -euo pipefail
CONFIG=${1:?config TOML}; STORE=${2:?store}; OUT=${3:?experiment folder}
source "${VENV:-$HOME/venvs/rootzone}/bin/activate"       # rootzone + ray[default,tune] installed
export RAY_AUTH_MODE=disabled                              # cluster-internal network
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379; dash=8265
tmp=/tmp/ray-$SLURM_JOB_ID                                 # per-job temp dir: no clash with other Ray users

# --block keeps each srun step alive for the length of the job; SLURM ends them when the script exits.
srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head --block --node-ip-address="$head_ip" --port=$port \
  --dashboard-host=0.0.0.0 --dashboard-port=$dash --temp-dir="$tmp" \
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-1}" &
sleep 20
for node in "${nodes[@]:1}"; do
  srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$head_ip:$port" --temp-dir="$tmp" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-1}" &
done
sleep 20

# Rerunning this script with --resume appended continues an interrupted experiment.
ray job submit --address "http://$head_ip:$dash" --working-dir "$SLURM_SUBMIT_DIR" -- \
  python ray_jobs/ensemble.py --config "$CONFIG" --store "$STORE" --out "$OUT" \
  --gpus-per-trial 0.25 --cpus-per-trial 4 --max-failures 3 "${@:4}"
