"""JupyterLab in headless Chromium: runs ticked in the LoRA runs sidebar are compared in the open
notebook, which gets a cell with `lm.diff(...)` and runs it.

The two runs are written straight into the server's run store (no training). The screenshot goes
to test-artifacts/lab-compare.png.
"""

from __future__ import annotations

import time

import nbformat
import pytest
from jupyterlab_session import ARTIFACTS, chromium, jupyterlab
from nbformat.v4 import new_code_cell, new_notebook

from lora_magic.core.store import RunStore

pytestmark = pytest.mark.browser
PROBE = "Describe the <red> lamp."


def write_run(store: RunStore, name: str, r: int, final_loss: float) -> None:
    config = {"name": name, "model": "tiny", "r": r, "learning_rate": 1e-3}
    now = time.time()
    record = {
        "status": "completed",
        "config": config,
        "step": 4,
        "total_steps": 4,
        "started": now,
        "finished": now,
    }
    store.create(name, {"name": name, **record})
    for step in range(1, 5):
        loss = 10.8 - (10.8 - final_loss) * step / 4
        store.append_event(name, {"type": "log", "step": step, "total_steps": 4, "loss": loss})
    store.append_event(name, {"type": "eval", "step": 4, "eval_loss": final_loss})
    store.append_event(
        name, {"type": "probe", "step": 4, "prompt": PROBE, "base": "lamp", "adapter": f"r{r} lamp"}
    )


def test_runs_ticked_in_the_sidebar_are_compared_in_the_notebook(tmp_path):
    from playwright.sync_api import expect

    with (
        jupyterlab(tmp_path, env={"LORA_MAGIC_RUNS": ""}, log_name="lab-compare-server.log") as lab,
        chromium() as browser,
    ):
        store = RunStore(lab.root / "lora_runs")
        write_run(store, "rank-4", 4, 10.5)
        write_run(store, "rank-16", 16, 10.2)
        notebook = new_notebook(
            cells=[new_code_cell("1 + 1")],
            metadata={
                "kernelspec": {
                    "name": "python3",
                    "display_name": "Python 3 (ipykernel)",
                    "language": "python",
                }
            },
        )
        nbformat.write(notebook, lab.root / "compare.ipynb")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        sidebar = page.locator("#lora-magic-runs")
        compare = sidebar.locator(".lm-RunsSidebar-compare")
        try:
            # With no notebook open, the comparison has nowhere to go: a dialog says so.
            page.goto(f"{lab.url}lab?token={lab.token}")
            page.locator('.jp-SideBar [data-id="lora-magic-runs"]').click()
            for name in ("rank-4", "rank-16"):
                sidebar.locator(f'li[data-run="{name}"] .lm-RunItem-select').check()
            compare.click()
            dialog = page.locator(".jp-Dialog")
            expect(dialog).to_contain_text("No notebook to compare the runs in")
            dialog.locator("button", has_text="Close").click()

            page.goto(lab.open("compare.ipynb"))
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=120_000)
            page.locator('.jp-SideBar [data-id="lora-magic-runs"]').click()
            expect(sidebar.locator("li.lm-RunItem")).to_have_count(2)
            expect(compare).to_have_text("Select runs to compare")
            expect(compare).to_be_disabled()

            # ticked in this order, so the diff's columns come in this order
            sidebar.locator('li[data-run="rank-16"] .lm-RunItem-select').check()
            expect(compare).to_be_disabled()
            sidebar.locator('li[data-run="rank-4"] .lm-RunItem-select').check()
            expect(compare).to_have_text("Compare 2 runs")
            compare.click()

            cells = page.locator(".jp-Notebook .jp-Cell")
            expect(cells).to_have_count(2)
            expect(cells.nth(1).locator(".jp-InputArea")).to_contain_text('lm.diff("rank-16", "rank-4")')
            output = cells.nth(1).locator(".lora-magic-diff")
            expect(output).to_contain_text("Settings that differ", timeout=120_000)
            settings = output.locator("table").first.locator("tr").all_inner_texts()
            assert [row.split() for row in settings] == [["rank-16", "rank-4"], ["r", "16", "4"]]
            expect(output).to_contain_text(PROBE)
            expect(output).to_contain_text("r16 lamp")
            plot = output.locator("img")
            expect(plot).to_be_visible()
            assert plot.evaluate("image => image.complete && image.naturalWidth") > 300
            output.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "lab-compare.png")
        except Exception:
            page.screenshot(path=ARTIFACTS / "lab-compare-failure.png")
            raise
