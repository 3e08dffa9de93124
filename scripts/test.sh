#!/usr/bin/env bash
# Install, then run the whole test suite (fast tests, Ray tests and the short end-to-end run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline
python3 -m pytest -q -p no:cacheprovider tests
