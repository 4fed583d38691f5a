"""JupyterLab in headless Chromium: a run started from a notebook shows in the LoRA runs sidebar and the
status bar with advancing progress, opens into its chart, and stops from the sidebar's Stop button;
a store of more runs than a page lists the newest, with their warnings, and the older on request.

Needs the package installed with its extensions (`pip install -e .`) and Debian's chromium.
Screenshots go to test-artifacts/lab-*.png.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from jupyterlab_session import ARTIFACTS, chromium, jupyterlab
from nbformat.v4 import new_code_cell, new_notebook

from lora_magic.core.store import RunStore

RUN = "lab-run"
STEPS = 20000  # far more than the test waits for: the run ends by the sidebar's Stop
PROBE = "Describe the red lamp."
RUNS_PAGE = 200  # runs the sidebar lists at first and adds on "Show 200 older runs"

pytestmark = [pytest.mark.browser, pytest.mark.real_model]


@pytest.fixture
def lab(tmp_path):
    # LORA_MAGIC_RUNS unset: the server's default store, <root>/lora_runs, which its kernels inherit.
    with jupyterlab(tmp_path, env={"LORA_MAGIC_RUNS": ""}, log_name="lab-sidebar-server.log") as lab:
        yield lab


@pytest.fixture
def page(request):
    """A browser tab; what it showed when the test failed is kept as test-artifacts/lab-failure.png."""
    (ARTIFACTS / "lab-failure.png").unlink(missing_ok=True)
    with chromium() as browser:
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.set_default_timeout(60_000)
        failed_before = request.session.testsfailed
        yield tab
        if request.session.testsfailed > failed_before:  # the test's own report is counted before teardown
            tab.screenshot(path=ARTIFACTS / "lab-failure.png")


def write_notebook(folder: Path, model_dir: str, records: list[dict]) -> Path:
    """A notebook in a subfolder: its kernel runs there, yet the run must reach the server's store."""
    folder.mkdir()
    notebook = new_notebook(
        cells=[
            new_code_cell(f"import lora_magic as lm\n\nrecords = {json.dumps(records)}"),
            new_code_cell(
                f"run = lm.train(lm.RunConfig(model={model_dir!r}, data=records, steps={STEPS}, "
                f"name={RUN!r}, batch_size=2, probes=[{PROBE!r}], probe_tokens=8))\nrun.name"
            ),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        },
    )
    path = folder / "train.ipynb"
    nbformat.write(notebook, path)
    return path


def step_of(item) -> int:
    return int(item.get_attribute("data-step") or 0)


def test_sidebar_follows_and_stops_a_run_started_from_a_notebook(lab, page, tiny_model_dir, records):
    from playwright.sync_api import expect

    write_notebook(lab.root / "work", tiny_model_dir, records)
    page.goto(lab.open("work/train.ipynb"))
    page.locator(".jp-Notebook").first.wait_for()

    # The sidebar is there, empty.
    page.locator('.jp-SideBar [data-id="lora-magic-runs"]').click()
    sidebar = page.locator("#lora-magic-runs")
    expect(sidebar.locator(".lm-RunsSidebar-title")).to_have_text("LoRA runs")
    expect(sidebar.locator(".lm-RunsSidebar-empty")).to_be_visible()
    store = sidebar.locator(".lm-RunsSidebar-root")
    expect(store).to_have_text("…/root/lora_runs")
    expect(store).to_have_attribute("title", f"Run store: {(lab.root / 'lora_runs').resolve()}")
    page.screenshot(path=ARTIFACTS / "lab-1-sidebar-empty.png")

    # Start the run from the notebook, as a person would: Run > Run All Cells, once the kernel is up.
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle")
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    expect(page.locator(".jp-InputPrompt").first).not_to_have_text("[ ]:")

    item = sidebar.locator(f'li.lm-RunItem[data-run="{RUN}"]')
    item.wait_for(timeout=120_000)  # the kernel imports torch and loads the model first
    expect(item).to_have_attribute("data-status", "running")
    deadline = time.monotonic() + 120
    while step_of(item) < 2:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.3)
    first = step_of(item)
    while step_of(item) <= first + 2:  # the sidebar keeps polling: progress advances
        assert time.monotonic() < deadline, "the sidebar's progress did not advance"
        time.sleep(0.3)
    expect(item.locator(".lm-Status")).to_have_text("running")
    expect(item.locator(".lm-RunItem-text")).to_contain_text(f"/{STEPS}")
    expect(item.locator(".lm-Spark-line")).to_have_count(1)  # the loss sparkline has a line
    expect(item.locator(".lm-RunItem-stop")).to_be_visible()

    # The status bar follows the active run.
    status = page.locator(".lm-RunStatus")
    expect(status).to_contain_text(f"LoRA {RUN}")
    expect(status).to_contain_text(re.compile(rf"\d+/{STEPS} · ETA \d"))
    page.screenshot(path=ARTIFACTS / "lab-2-run-in-progress.png")
    status.screenshot(path=ARTIFACTS / "lab-3-status-bar.png")

    # Opening the run shows its full loss chart and its configuration.
    item.locator(".lm-RunItem-name").click()
    detail = page.locator(".lm-RunDetail")
    expect(detail.locator(".lm-Chart-loss")).to_have_count(1)
    expect(detail.locator(".lm-RunDetail-config")).to_contain_text(tiny_model_dir)
    expect(detail.locator(".lm-RunDetail-probes")).to_contain_text(PROBE)
    page.screenshot(path=ARTIFACTS / "lab-4-run-detail.png")

    # Stop from the sidebar.
    item.locator(".lm-RunItem-stop").click()
    expect(item).to_have_attribute("data-status", "stopped", timeout=60_000)
    expect(item.locator(".lm-RunItem-stop")).to_be_hidden()
    expect(status).to_be_hidden()
    record = json.loads((lab.root / "lora_runs" / RUN / "run.json").read_text())
    assert record["status"] == "stopped"
    assert first < record["step"] < STEPS
    expect(detail).to_have_attribute("data-status", "stopped")
    page.screenshot(path=ARTIFACTS / "lab-5-run-stopped.png")

    # More runs than a page, one of them diverging: the newest 200 are listed, with the warning,
    # and the older ones when asked.
    store = RunStore(lab.root / "lora_runs")
    for number in range(RUNS_PAGE):
        warning = "diverging: the training loss (smoothed) is 3x its lowest" if number == 7 else None
        store.create(
            f"later-{number:03d}", {"status": "completed", "created": time.time(), "warning": warning}
        )
    runs = sidebar.locator("li.lm-RunItem")
    expect(runs).to_have_count(RUNS_PAGE, timeout=30_000)
    expect(item).to_have_count(0)
    diverging = sidebar.locator('li.lm-RunItem[data-run="later-007"] .lm-RunItem-warning')
    expect(diverging).to_have_text("⚠ diverging: the training loss (smoothed) is 3x its lowest")
    expect(sidebar.locator(".lm-RunItem-warning:visible")).to_have_count(1)
    older = sidebar.locator(".lm-RunsSidebar-older")
    expect(older).to_have_text(f"Show {RUNS_PAGE} older runs")
    older.click()
    expect(runs).to_have_count(RUNS_PAGE + 1)
    expect(item).to_have_attribute("data-status", "stopped")
    expect(older).to_be_hidden()

    # The launcher's entry opens the ready notebook template.
    page.keyboard.press("Control+Shift+L")
    page.locator(".jp-LauncherCard", has_text="New LoRA fine-tuning notebook").click()
    expect(page.locator(".jp-MarkdownOutput h1").first).to_contain_text("LoRA fine-tuning")
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(
        "lora-finetune"
    )
    assert list(lab.root.rglob("lora-finetune.ipynb"))
    page.screenshot(path=ARTIFACTS / "lab-6-template-notebook.png")
