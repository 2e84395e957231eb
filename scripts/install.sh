#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with torch pinned to a CPU
# build and clipvip installed in editable mode with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so nothing below can pull a multi-GB CUDA build on a CPU machine.
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[test]'
