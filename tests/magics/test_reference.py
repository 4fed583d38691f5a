"""docs/magics.md is generated from the parsers that answer --help, and kept up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lora_magic.magics.reference import markdown

DOC = Path(__file__).parents[2] / "docs" / "magics.md"


def test_committed_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == markdown(), (
        "docs/magics.md is stale: python -m lora_magic.magics --markdown > docs/magics.md"
    )


def test_reference_is_printed_by_the_module():
    out = subprocess.run(
        [sys.executable, "-m", "lora_magic.magics", "--markdown"], capture_output=True, text=True, check=True
    ).stdout
    assert out == markdown()
    for title in ("## `%%finetune`", "### `%lora show`", "## `%%compare`", "- `runs_dir`"):
        assert title in out
