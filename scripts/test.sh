#!/usr/bin/env bash
# Runs the whole test suite: lint, unit, real-model, notebook, server and browser tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY="${LORA_MAGIC_VENV:-.venv}/bin/python"
# Browser tests drive Debian's Chromium through Playwright.
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest "$@"
