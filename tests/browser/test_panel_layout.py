"""The comparison and chat panels in a real JupyterLab: they fit their output (no horizontal
scrollbar), greedy generation shows no temperature, and blank answers read "(empty answer)" in a
short cell instead of dozens of empty lines.

Screenshots go to test-artifacts/panels-*.png.
"""

from __future__ import annotations

import json
import re

import nbformat
import pytest
from jupyterlab_session import ARTIFACTS, chromium, jupyterlab
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.browser
PROMPT = "Describe the red lamp."
OVERFLOW = "el => ({scroll: el.scrollWidth, client: el.clientWidth})"


def notebook(model_dir: str, records: list[dict]) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_code_cell(
                f"%load_ext lora_magic\nrecords = {json.dumps(records)}\n"
                f"%finetune --model {model_dir} --data records --steps 1 --eval-fraction 0 --name tiny"
            ),
            # greedy: the random tiny model answers with blank lines, the case that made cells tall
            new_code_cell(f"%%compare --max-new-tokens 48\n{PROMPT}"),
            new_code_cell("%lora chat"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        },
    )


def test_compare_and_chat_panels_fit_their_output(tmp_path, tiny_model_dir, records):
    from playwright.sync_api import expect

    runs = tmp_path / "root" / "lora_runs"
    with (
        jupyterlab(tmp_path, env={"LORA_MAGIC_RUNS": str(runs), "LORA_MAGIC_WIDGETS": "on"}) as lab,
        chromium() as browser,
    ):
        nbformat.write(notebook(tiny_model_dir, records), lab.root / "panels.ipynb")
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(lab.open("panels.ipynb"))
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            cells = page.locator(".jp-Notebook .jp-Cell")
            compare, chat = cells.nth(1), cells.nth(2)
            expect(compare.locator(".jp-OutputArea-output").last).to_contain_text("tokens/s", timeout=300_000)
            expect(chat.locator(".lora-magic-chat")).to_be_visible(timeout=120_000)
            compare.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "panels-1-compare-and-chat.png")

            for cell in (compare, chat):
                for output in cell.locator(".jp-OutputArea-output").all():
                    size = output.evaluate(OVERFLOW)
                    assert size["scroll"] <= size["client"], size  # no horizontal scrollbar
            shown = compare.locator(".jp-OutputArea-output").last
            assert "temperature" not in shown.inner_text()  # greedy: no temperature to show
            assert "(empty answer)" in shown.inner_text()  # the random tiny model answers blank lines
            assert shown.bounding_box()["height"] < 250  # not 48 empty lines per column
        except Exception:
            page.screenshot(path=ARTIFACTS / "panels-failure.png")
            raise
