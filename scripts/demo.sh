#!/usr/bin/env bash
# The demo: set up .venv if needed, then train the user guide's HoneyBadgerModule on
# scikit-learn's digits in the modes mhc, hc and residual with the stability dashboard, then
# StreamSequential stacks (mhc vs hc) with the stream dashboard (--no-streams skips them).
# Arguments go to the demo (.venv/bin/python -m mhc_torch.demo --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m mhc_torch.demo "$@"
