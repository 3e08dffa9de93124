#!/usr/bin/env bash
# Install (scripts/install.sh: the project in .venv/), then run the whole test suite (fast tests, Ray tests and
# the short end-to-end run) with the venv's python. .venv/bin goes first on PATH as `. .venv/bin/activate`
# would put it, since some tests run the venv's commands (wandb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline
.venv/bin/python -m pytest -q -p no:cacheprovider tests
