#!/usr/bin/env bash
# Install arbor-rl into the virtual environment .venv/ of this repository, made (if missing) with the first
# python3 on PATH. The CPU build of torch goes in first, pinned (an unpinned torch pulls a multi-GB CUDA build),
# then the project with its test extra, `pip install -e ".[test]"`; both with requirements/lock.txt as
# constraints, so every third-party package gets the version the lock names. Run it again at any time: it
# reuses .venv/ and only installs what differs from the lock. Use the environment with `. .venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock.txt
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null 2>&1; then
        echo "install.sh: no python3 on PATH (need Python >= 3.10 with its venv module)" >&2
        exit 1
    fi
    if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
        echo "install.sh: $(command -v python3) cannot create a virtual environment (no venv/ensurepip module;" \
             "on Debian or Ubuntu: apt install python3-venv)" >&2
        exit 1
    fi
    echo "install.sh: creating .venv with $(command -v python3) ($(python3 -c 'import platform; print(platform.python_version())'))"
    python3 -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install -q -c "$LOCK" torch==2.13.0
"$PY" -m pip install -q -c "$LOCK" -e ".[test]"
echo "install.sh: arbor-rl installed in .venv ($("$PY" -c 'import platform; print(platform.python_version())')); activate it with: . .venv/bin/activate"
