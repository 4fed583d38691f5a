#!/usr/bin/env bash
# Fine-tunes the built-in model on the bundled product descriptions and prints the base and the
# fine-tuned answer to a held-out prompt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${LORA_MAGIC_VENV:-.venv}/bin/python" -m lora_magic.demo "$@"
