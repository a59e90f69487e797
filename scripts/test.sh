#!/usr/bin/env bash
# Set up, lint, and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the browser test drives Debian's chromium (Playwright never downloads a browser); skipped when it is missing
[ -x /usr/bin/chromium ] || ! command -v apt-get >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || echo "chromium not installed: the browser test will be skipped"
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
ruff format --check .
python -m pytest -q
