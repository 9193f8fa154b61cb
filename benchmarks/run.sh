#!/usr/bin/env bash
# Run every benchmark and write benchmarks/RESULTS.md.
#   bash benchmarks/run.sh                 # full sweep (about half an hour on 2 cores)
#   bash benchmarks/run.sh --quick         # reduced sweep (a few minutes)
#   bash benchmarks/run.sh --sections torch_speed,torch_memory --wait-quiet
# Sets up .venv (scripts/setup_env.sh) and installs the peer packages, PyPI mhc 0.5.5 into
# benchmarks/.peer and hyper-connections 0.4.11 into benchmarks/.peer-hc (never into .venv),
# then runs `python -m benchmarks`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if ! .venv/bin/python -c "from benchmarks.peer import installed_version as v; exit(v() != '0.5.5')"; then
  .venv/bin/python -m pip install --quiet --no-deps --upgrade --target benchmarks/.peer mhc==0.5.5
fi
# hyper-connections 0.4.11 (the multi-stream peer) and its pure-Python dependencies, pinned, in
# a folder of its own (benchmarks/peer_hc.py holds the pins); torch is the .venv's.
if ! .venv/bin/python -c "from benchmarks.peer_hc import is_installed; exit(not is_installed())"; then
  pins=$(.venv/bin/python -c "from benchmarks.peer_hc import requirements; print(requirements())")
  rm -rf benchmarks/.peer-hc
  .venv/bin/python -m pip install --quiet --no-deps --target benchmarks/.peer-hc $pins
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Loggers stay offline and write to a scratch folder (see /work/shared/notes/offline-loggers.md).
export MPLCONFIGDIR="$scratch/mpl" MPLBACKEND=Agg WANDB_MODE=offline WANDB_SILENT=true \
  WANDB_DIR="$scratch/wandb" WANDB_CACHE_DIR="$scratch/wandb-cache" \
  WANDB_CONFIG_DIR="$scratch/wandb-config" WANDB_DATA_DIR="$scratch/wandb-data" \
  COMET_START_ONLINE=false COMET_ERROR_TRACKING_ENABLE=false COMET_AUTO_LOG_ENV_DETAILS=false \
  MLFLOW_DISABLE_TELEMETRY=true
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m benchmarks "$@"
