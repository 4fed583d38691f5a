"""A notebook run as a widget frontend runs it (fresh kernel, CPU, tiny model), then saved: its cells
are clean, and its outputs show the results without a kernel, in nbconvert's HTML too."""

from __future__ import annotations

import json
import re

import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook

RUN = "saved-run"
BACKGROUND = "background-run"
PROBE = "Describe product 1, the blue kettle."
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, tiny_model_dir):
    records = [
        {"instruction": f"Describe product {i}, the {colour} kettle.", "response": f"A {colour} kettle."}
        for i, colour in enumerate(["red", "blue", "green", "amber"] * 4)
    ]
    nb = new_notebook(
        cells=[
            new_code_cell(f"%load_ext lora_magic\nrecords = {json.dumps(records)}"),
            new_code_cell(
                f"%%finetune\nmodel: {tiny_model_dir}\ndata: records\nname: {RUN}\nsteps: 6\n"
                f"eval_fraction: 0.25\nprobes: {json.dumps([PROBE])}\nprobe_tokens: 8"
            ),
            new_code_cell("_.status, _.step"),
            new_code_cell(f"%%compare --adapters base,{RUN} --max-new-tokens 8 --temperature 1.0\n{PROBE}"),
            new_code_cell(
                f"%%finetune --background\nmodel: {tiny_model_dir}\ndata: records\nname: {BACKGROUND}\nsteps: 3"
            ),
            new_code_cell("_.wait().status"),  # the background dashboard is frozen when this cell ends
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    folder = tmp_path_factory.mktemp("saved-notebook")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORA_MAGIC_WIDGETS", "on")  # as in JupyterLab: live widgets
        patch.setenv("LORA_MAGIC_RUNS", str(folder / "lora_runs"))
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
        ).execute()
    return nb


def test_the_first_finetune_of_a_fresh_kernel_shows_no_stderr_and_no_progress_bar(executed):
    for cell in executed.cells:
        for output in cell.outputs:
            assert output.output_type != "error", "".join(output.traceback)
            assert output.get("name") != "stderr", output.text
    finetune = executed.cells[1].outputs
    loading, dashboard = finetune  # one line for the model load, then the dashboard: nothing else
    assert re.fullmatch(r"Loading weights: (\d+)/\1 \[\d\d:\d\d\]", loading.data["text/plain"])
    assert WIDGET_VIEW not in loading.data  # not a progress bar widget
    assert "lora-magic-static" in dashboard.data["text/html"]
    # the run is the cell's result, not echoed under the dashboard
    assert not [o for o in finetune if o.output_type == "execute_result"]
    assert executed.cells[2].outputs[0].data["text/plain"] == "('completed', 6)"


def test_the_saved_outputs_need_no_kernel(executed):
    finetune, compare = executed.cells[1].outputs[-1], executed.cells[3].outputs[-1]
    for output in (finetune, compare):
        assert output.output_type == "display_data" and WIDGET_VIEW not in output.data
    assert "data:image/png;base64," in finetune.data["text/html"]
    assert f"Run {RUN} completed after 6/6 steps" in finetune.data["text/plain"]
    assert "probe" in finetune.data["text/plain"] and PROBE in finetune.data["text/plain"]
    assert compare.data["text/plain"].count("tokens/s") == 2


def test_nbconvert_html_shows_the_plot_the_summary_and_the_answers(executed):
    page, _ = HTMLExporter().from_notebook_node(executed)
    page = page.replace("'", '"')  # nbconvert writes attributes in double quotes
    page = page.partition("application/vnd.jupyter.widget-state+json")[0]  # the outputs, not the state
    dashboard = page[page.index('<div class="lora-magic-static">') :]
    assert re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{2000,}"', dashboard)
    assert f"Run {RUN} completed after 6/6 steps; train loss " in dashboard
    assert "eval loss" in dashboard and "Adapter saved to " in dashboard
    assert '<table class="lora-magic-probes"' in dashboard and PROBE in dashboard
    compare = page[page.index("<i>Describe product 1") :]
    for name in ("base", RUN):
        assert f"<b>{name}</b>" in compare
    assert compare.count(" tokens, ") == 2  # each column with its answer's length and speed
    assert "Error displaying widget" not in page and "Loading widget" not in page


def test_a_background_dashboard_is_frozen_after_the_cell_that_saw_its_run_end(executed):
    (dashboard,) = executed.cells[4].outputs
    assert WIDGET_VIEW not in dashboard.data
    assert f"Run {BACKGROUND} completed after 3/3 steps" in dashboard.data["text/plain"]
    assert "data:image/png;base64," in dashboard.data["text/html"]
    assert executed.cells[5].outputs[0].data["text/plain"] == "'completed'"
