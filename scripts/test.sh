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
# Two workers: while one trains, the other starts kernels, servers and browsers (tests/conftest.py
# orders the work). Each computes on one thread, as do the kernels and processes it starts: two
# workers of two threads on two cores wait on each other's threads and run several times slower.
# LORA_MAGIC_TEST_WORKERS=0 runs the suite in this one process, on every core.
WORKERS="${LORA_MAGIC_TEST_WORKERS:-2}"
[ "$WORKERS" = 0 ] || export OMP_NUM_THREADS=1
exec "$PY" -m pytest -n "$WORKERS" --dist loadgroup --no-loadscope-reorder "$@"
