"""`%lora export` in a real IPython shell, over a run of the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError

import lora_magic as lm


def test_lora_export_writes_a_gguf_and_says_what_is_wrong(
    ip, tiny_model_dir, records, runs_dir, tmp_path, monkeypatch
):
    lm.train(model=tiny_model_dir, data=records, steps=2, name="tiny-run", runs_dir=runs_dir).wait()
    exported = ip.run_line_magic("lora", f"export tiny-run --type q8_0 --out {tmp_path / 'gguf'}")
    assert exported.gguf == tmp_path / "gguf" / "tiny-run.q8_0.gguf" and exported.gguf.is_file()
    assert "ollama create tiny-run -f" in repr(exported)

    merged = ip.run_line_magic("lora", f"export tiny-run --format safetensors --out {tmp_path / 'merged'}")
    assert (merged.path / "model.safetensors").is_file()

    monkeypatch.chdir(tmp_path)  # without --out: exports/ beside the notebook
    assert ip.run_line_magic("lora", "export tiny-run").gguf == Path(
        "exports/tiny-run-gguf/tiny-run.f16.gguf"
    )
    assert (ip.run_line_magic("lora", "merge tiny-run").path / "model.safetensors").is_file()
    assert (tmp_path / "exports" / "tiny-run-merged" / "model.safetensors").is_file()

    with pytest.raises(
        UsageError, match=r"^type='q4' is not a GGUF type this export writes; choose one of: f16, q8_0$"
    ):
        ip.run_line_magic("lora", f"export tiny-run --type q4 --out {tmp_path / 'other'}")
    with pytest.raises(UsageError, match=r"no saved adapter named 'tiny-rum' \(did you mean 'tiny-run'\?\)"):
        ip.run_line_magic("lora", f"export tiny-rum --out {tmp_path / 'other'}")
    assert not (tmp_path / "other").exists()
