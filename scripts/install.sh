#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with torch pinned to a CPU
# build and clipvip installed in editable mode with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$SECONDS
step() { echo "[install $1/4, $((SECONDS - start)) s] $2"; }
step 1 "virtual environment .venv"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so nothing below can pull a multi-GB CUDA build on a CPU machine.
step 2 "torch, pinned to a CPU build (about 30 s)"
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch
step 3 "clipvip and its dependencies: Ray, transformers, PyAV, faiss, ... (about 2 minutes; quiet until done)"
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[test]'
step 4 "checking the environment"
.venv/bin/python -m pip check
echo "[install done in $((SECONDS - start)) s] .venv/bin/clipvip --help lists the commands"
