"""The house's floors (docs/architecture.md): the import contracts in pyproject.toml hold, and the
core imports no torch, so the server extension and a fresh kernel stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_floors_import_only_downwards_and_in_no_circle():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_core_the_server_and_the_magics_load_without_torch():
    code = (
        "import pkgutil, importlib, sys\n"
        "import lora_magic.core, lora_magic.server, lora_magic.magics\n"
        "for m in pkgutil.iter_modules(lora_magic.core.__path__, 'lora_magic.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = [name for name in ('torch', 'transformers', 'peft', 'trl') if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
