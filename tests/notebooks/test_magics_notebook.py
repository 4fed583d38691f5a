"""The end-to-end notebook, executed headless by nbclient on the tiny model, outputs asserted."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).with_name("magics_end_to_end.ipynb")


def text(cell) -> str:
    """Everything a cell showed as text: streams and the text/plain of results and displays."""
    parts = []
    for output in cell.outputs:
        assert output.output_type != "error", "".join(output.get("traceback", []))
        parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_runs_end_to_end(runs_dir, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_MAGIC_NOTEBOOK_MODEL", tiny_model_dir)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    cells = {cell.source.splitlines()[0]: cell for cell in nb.cells if cell.cell_type == "code"}

    preview = text(cells["%lora preview df -n 1"])
    assert preview.startswith("14 training examples, 2 for evaluation")
    assert "⟦Product 0 is a red lamp for every day." in preview

    training = text(cells["%%finetune --name notebook-run"])
    assert "[notebook-run]" in training and "step 6/6" in training and "probe" in training
    assert "<Run " not in training  # the run is the cell's result, not echoed under its own progress
    assert any("image/png" in o.get("data", {}) for o in cells["%%finetune --name notebook-run"].outputs)
    assert text(cells["import lora_magic"]) == "('completed', 6, 'adapter')"

    comparison = text(cells["%%compare --adapters base,notebook-run --max-new-tokens 8"])
    assert comparison.startswith("Prompt: Describe product 1, the blue kettle.")
    assert "--- base (" in comparison and "--- notebook-run (" in comparison

    runs = text(cells["%lora runs"])
    assert "notebook-run" in runs and "completed" in runs and "6/6" in runs

    assert "Merged model saved to merged-model (base " in text(
        cells["%lora merge notebook-run --out merged-model"]
    )
    assert (tmp_path / "merged-model" / "model.safetensors").is_file()
    assert text(cells["%lora show notebook-run"]).startswith("Run 'notebook-run': completed, step 6/6")
