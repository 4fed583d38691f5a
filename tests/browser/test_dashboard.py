"""The widgets in a real JupyterLab: `%%finetune`'s dashboard advances, its loss chart gains points as
the run goes on, its Stop button stops the busy cell's run with the adapter saved, the stopped
dashboard leaves its picture with the plot, and `%%compare` shows two columns of text.

Screenshots go to test-artifacts/widgets-*.png.
"""

from __future__ import annotations

import json
import re
import time

import nbformat
import pytest
from jupyterlab_session import ARTIFACTS, chromium, jupyterlab
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.browser
RUN = "widget-run"
STEPS = 5000  # the test ends the run with the dashboard's Stop button
PROBE = "Describe the red lamp."


def notebook(model_dir: str, records: list[dict]) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_code_cell(f"%load_ext lora_magic\nrecords = {json.dumps(records)}"),
            new_code_cell(
                f"%%finetune\nmodel: {model_dir}\ndata: records\nname: {RUN}\nsteps: {STEPS}\n"
                f"batch_size: 2\neval_every: 100\nprobes: [{PROBE}]\nprobe_tokens: 6\nprobe_every: 5"
            ),
            # sampled, so the random tiny model writes visible text rather than blank lines
            new_code_cell(f"%%compare --max-new-tokens 8 --temperature 1.0\n{PROBE}"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        },
    )


def step_shown(dashboard) -> int:
    found = re.search(r"step (\d+)/", dashboard.locator(".widget-html").nth(1).inner_text())
    return int(found.group(1)) if found else 0


def chart_steps(dashboard) -> tuple[int, float]:
    """(the train points the chart draws, the last step among them); (0, 0) before it draws any."""
    chart = dashboard.locator(".lora-magic-loss-chart svg")
    if not chart.count():
        return 0, 0
    return int(chart.get_attribute("data-points")), float(chart.get_attribute("data-last-step"))


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_dashboard_stop_and_compare_in_jupyterlab(tmp_path, tiny_model_dir, records):
    from playwright.sync_api import expect

    runs = tmp_path / "root" / "lora_runs"
    with (
        jupyterlab(tmp_path, env={"LORA_MAGIC_RUNS": str(runs), "LORA_MAGIC_WIDGETS": ""}) as lab,
        chromium() as browser,
    ):
        nbformat.write(notebook(tiny_model_dir, records), lab.root / "widgets.ipynb")
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(lab.open("widgets.ipynb"))
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            dashboard = page.locator(".lora-magic-dashboard")
            dashboard.wait_for(timeout=180_000)  # the kernel imports torch and loads the model first
            expect(dashboard).to_contain_text(RUN)
            wait_until(lambda: step_shown(dashboard) >= 2, 180, "the dashboard showed no progress")
            first_step = step_shown(dashboard)
            wait_until(lambda: chart_steps(dashboard)[0] >= 2, 60, "the loss chart drew no points")
            points, last_step = chart_steps(dashboard)
            wait_until(lambda: step_shown(dashboard) > first_step + 2, 120, "the progress did not advance")
            wait_until(lambda: chart_steps(dashboard)[1] > last_step, 120, "the loss chart did not advance")
            assert chart_steps(dashboard)[0] >= points
            # drawn in the browser from points: a line of them, and no picture sent from the kernel
            assert dashboard.locator(".lora-magic-loss-chart polyline").count() >= 2
            assert dashboard.locator("img").count() == 0
            expect(dashboard).to_contain_text("trainable")
            expect(dashboard.locator(".lora-magic-probes")).to_contain_text(PROBE)
            dashboard.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "widgets-1-dashboard-training.png")

            dashboard.get_by_role("button", name="Stop").click()
            expect(dashboard).to_contain_text("Adapter saved to", timeout=120_000)
            expect(dashboard).to_contain_text(f"Run {RUN} stopped")
            record = json.loads((runs / RUN / "run.json").read_text())
            assert record["status"] == "stopped" and first_step < record["step"] < STEPS
            assert (runs / RUN / "adapter" / "adapter_config.json").is_file()
            # once the cell is done, the output is the dashboard's picture, the plot a PNG in it
            plot = page.locator(".lora-magic-static .lora-magic-dashboard img")
            expect(plot).to_have_count(1, timeout=60_000)
            assert plot.evaluate("image => image.complete && image.naturalWidth") > 300
            page.screenshot(path=ARTIFACTS / "widgets-2-dashboard-stopped.png")

            # The queued %%compare cell runs once the stopped %%finetune cell returns.
            columns = page.locator(".lora-magic-compare .lora-magic-column")
            expect(columns).to_have_count(2, timeout=120_000)
            expect(columns.nth(0)).to_contain_text("base")
            expect(columns.nth(1)).to_contain_text(RUN)
            for column in (columns.nth(0), columns.nth(1)):
                expect(column).to_contain_text("tokens/s", timeout=60_000)
                # its name, its answer, its speed: live, or as the picture the panel leaves once done
                assert len(column.inner_text().strip().splitlines()) >= 3
            # once the answers are in, the live panel is replaced by its picture: scroll to that
            settled = page.locator(".lora-magic-static .lora-magic-compare")
            expect(settled).to_have_count(1, timeout=60_000)
            expect(settled).to_contain_text(RUN)
            settled.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "widgets-3-compare.png")
        except Exception:
            page.screenshot(path=ARTIFACTS / "widgets-failure.png")
            raise
