"""The example notebooks that run on a CPU, executed headless by nbclient as saved: every cell must
run without an error, and each notebook's last cells assert what it shows.

`examples/colab.ipynb` needs a GPU and the Hugging Face Hub; `test_colab_notebook.py` checks it
without running it. Any other notebook put in `examples/` is picked up here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.real_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOT_ON_A_CPU = {"colab.ipynb"}
NOTEBOOKS = sorted(path for path in EXAMPLES.glob("*.ipynb") if path.name not in NOT_ON_A_CPU)
CELL_TIMEOUT = 1800  # seconds per cell: a training cell on two shared CPU cores


def test_the_examples_are_found():
    assert {path.name for path in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "lora_knobs.ipynb",
        "adapters_per_client.ipynb",
        "data_efficiency.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_example_notebook_runs_headless(path, runs_dir, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is saved with outputs; clear them"
    )
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors, "".join(errors[0].traceback)
    assert runs_dir.is_dir()  # the runs went to the test's run store, not beside the notebook
