"""A notebook run in JupyterLab, saved, and reopened on a new kernel shows its results without running
a cell: the dashboard's final loss plot and summary, and the comparison's answers, where a plain widget
output would say "Error displaying widget: model not found".

Screenshots go to test-artifacts/saved-*.png.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import nbformat
import pytest
from jupyterlab_session import ARTIFACTS, chromium, jupyterlab
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.browser
RUN = "saved-run"
PROBE = "Describe the red lamp."
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def notebook(model_dir: str, records: list[dict]) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_code_cell(f"%load_ext lora_magic\nrecords = {json.dumps(records)}"),
            new_code_cell(
                f"%%finetune\nmodel: {model_dir}\ndata: records\nname: {RUN}\nsteps: 8\n"
                f"batch_size: 2\nprobes: [{PROBE}]\nprobe_tokens: 6"
            ),
            new_code_cell(f"%%compare --max-new-tokens 8 --temperature 1.0\n{PROBE}"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        },
    )


def shut_down_kernels(lab) -> None:
    headers = {"Authorization": f"token {lab.token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{lab.url}api/sessions", headers=headers)) as reply:
        sessions = json.load(reply)
    for session in sessions:
        request = urllib.request.Request(
            f"{lab.url}api/sessions/{session['id']}", headers=headers, method="DELETE"
        )
        urllib.request.urlopen(request).close()


def saved_outputs(path) -> list[dict]:
    try:
        saved = nbformat.read(path, as_version=4)
    except nbformat.reader.NotJSONError:  # the server writes the file in place: caught mid-save
        return []
    return [output for cell in saved.cells for output in cell.get("outputs", [])]


def test_a_saved_notebook_reopens_with_its_results(tmp_path, tiny_model_dir, records):
    from playwright.sync_api import expect

    runs = tmp_path / "root" / "lora_runs"
    with (
        jupyterlab(tmp_path, env={"LORA_MAGIC_RUNS": str(runs), "LORA_MAGIC_WIDGETS": ""}) as lab,
        chromium() as browser,
    ):
        path = lab.root / "saved.ipynb"
        nbformat.write(notebook(tiny_model_dir, records), path)
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.set_default_timeout(60_000)
        try:
            page.goto(lab.open("saved.ipynb"))
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            # live first, then each output settles into its picture when its cell's work is done
            page.locator(".lora-magic-dashboard").wait_for(timeout=180_000)
            expect(page.locator(".lora-magic-static")).to_have_count(2, timeout=240_000)
            page.locator(".jp-Notebook").click()
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 30
            while sum("lora-magic-static" in str(o.get("data")) for o in saved_outputs(path)) < 2:
                assert time.monotonic() < deadline, "the notebook was not saved with its outputs"
                time.sleep(0.5)
            assert not [o for o in saved_outputs(path) if WIDGET_VIEW in o.get("data", {})]
            page.close()

            shut_down_kernels(lab)  # the widgets of that kernel are gone: nothing is live any more
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(lab.open("saved.ipynb"))
            static = page.locator(".lora-magic-static")
            expect(static).to_have_count(2, timeout=120_000)
            dashboard, compare = static.nth(0), static.nth(1)
            expect(dashboard).to_contain_text(f"Run {RUN} completed after 8/8 steps")
            expect(dashboard.locator(".lora-magic-probes")).to_contain_text(PROBE)
            plot = dashboard.locator("img")
            expect(plot).to_be_visible()
            assert plot.evaluate("image => image.complete && image.naturalWidth") > 300
            expect(compare).to_contain_text(PROBE)
            expect(compare).to_contain_text("base")
            expect(compare).to_contain_text(RUN)
            assert compare.inner_text().count("tokens/s") == 2
            expect(page.locator(".jp-Notebook")).not_to_contain_text("Error displaying widget")
            dashboard.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "saved-1-reopened-dashboard.png")
            compare.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "saved-2-reopened-compare.png")
        except Exception:
            page.screenshot(path=ARTIFACTS / "saved-failure.png")
            raise
