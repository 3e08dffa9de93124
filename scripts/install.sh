#!/usr/bin/env bash
# Install arbor-rl: the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[test]"
