#!/bin/bash
# SLURM batch script: start a Ray head on the first node and workers on the others, then submit
# ray_jobs/ensemble.py as a Ray job. Store and EXP on the shared file system (same path on every node).
#   sbatch cluster/slurm-ensemble.sh cfg.toml /shared/stores/camels.zarr /shared/runs/exp1
# Security (docs/ray.md, "Security"): Ray token authentication is on (RAY_AUTH_MODE=token) with a fresh token
# per job in a file only you can read, and the dashboard/job API listens on the head's 127.0.0.1 only; the job
# is submitted from the head node. To watch the dashboard, forward it over SSH (the log prints the command).
#   RAY_AUTH_TOKEN_PATH=~/secrets/ray_token sbatch ...   uses your own token file instead (mode 600, on a file
#                                                       system every node mounts at the same path)
#SBATCH --job-name=rootzone-ensemble
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=1
#SBATCH --time=12:00:00
#SBATCH --output=rootzone-ensemble-%j.log
set -euo pipefail
CONFIG=${1:?config TOML}; STORE=${2:?store}; OUT=${3:?experiment folder}
source "${VENV:-$HOME/venvs/rootzone}/bin/activate"       # rootzone + ray[default,tune] (>= 2.52) installed

# Token authentication for every Ray process and client of this job (srun passes the environment on).
export RAY_AUTH_MODE=token
if [[ -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
  # A new token for this job in $HOME/.ray (the shared home: every node reads the same file), removed at exit.
  mkdir -p -m 700 "$HOME/.ray"
  export RAY_AUTH_TOKEN_PATH="$HOME/.ray/rootzone-slurm-$SLURM_JOB_ID.token"
  trap 'rm -f "$RAY_AUTH_TOKEN_PATH"' EXIT
  (umask 077 && python -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
fi
if [[ ! -s $RAY_AUTH_TOKEN_PATH ]] || [[ $(stat -c %a "$RAY_AUTH_TOKEN_PATH") != [4-7]00 ]]; then
  echo "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH must be a non-empty file only you can read (chmod 600)" >&2
  exit 2
fi

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379; dash=8265
tmp=/tmp/ray-$SLURM_JOB_ID                                 # per-job temp dir: no clash with other Ray users

# --block keeps each srun step alive for the length of the job; SLURM ends them when the script exits.
# The GCS (--port) listens on the cluster network, for the workers; it checks the token. The dashboard and job
# API listen on the head's loopback only.
srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head --block --node-ip-address="$head_ip" --port=$port \
  --dashboard-host=127.0.0.1 --dashboard-port=$dash --temp-dir="$tmp" \
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-1}" &
sleep 20
for node in "${nodes[@]:1}"; do
  srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$head_ip:$port" --temp-dir="$tmp" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-1}" &
done
sleep 20
echo "Ray dashboard: ssh -N -L $dash:127.0.0.1:$dash $head   (through your login node: add -J LOGIN), then"
echo "  http://127.0.0.1:$dash with the token in $RAY_AUTH_TOKEN_PATH"

# Submitted on the head node, to its loopback job API, with the token from RAY_AUTH_TOKEN_PATH.
# Rerunning this script with --resume appended continues an interrupted experiment.
srun --overlap --nodes=1 --ntasks=1 -w "$head" ray job submit --address "http://127.0.0.1:$dash" \
  --working-dir "$SLURM_SUBMIT_DIR" -- \
  python ray_jobs/ensemble.py --config "$CONFIG" --store "$STORE" --out "$OUT" \
  --gpus-per-trial 0.25 --cpus-per-trial 4 --max-failures 3 "${@:4}"
