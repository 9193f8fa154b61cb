#!/usr/bin/env bash
# The test command: set up .venv on a fresh clone, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
