"""Rough edges of the widgets: data frames in the form, blank answers, a lagging chart, the compare
panel's layout and refusals, and the chat panel's conversation."""

from __future__ import annotations

import time

import pandas as pd
import pytest

import lora_magic
from lora_magic.core.config import RunConfig, Sampling
from lora_magic.model.session import BASE, session
from lora_magic.training.run import Run
from lora_magic.widgets import ChatPanel, ComparePanel, ConfigForm, Dashboard
from lora_magic.widgets.compare import Column

BLANK = "\n" * 48  # what a tiny model may answer


@pytest.fixture
def run(runs_dir):
    store = lora_magic.RunStore(runs_dir)
    store.create("shown", {"name": "shown", "status": "running"})
    return Run("shown", RunConfig(), store)


def test_a_form_over_a_data_frame_writes_its_cell(records, tiny_model_dir):
    form = ConfigForm({"df": pd.DataFrame(records)}, RunConfig(model=tiny_model_dir))
    form.copy_button.click()
    assert form.cell.value.splitlines()[:2] == ["%%finetune", f"model: {tiny_model_dir}"]
    assert "data: df" in form.cell.value
    assert form.copy_button.layout.width == "auto"  # the whole label shows


def test_blank_answers_are_said_to_be_empty_and_long_ones_are_capped(run):
    dashboard = Dashboard(run)
    dashboard.handle({"type": "probe", "step": 2, "prompt": "p", "base": "A lamp.", "adapter": BLANK})
    assert "(empty answer)" in dashboard.probes.value and BLANK not in dashboard.probes.value
    assert "max-height:12em;overflow-y:auto" in dashboard.probes.value
    column = Column("base")
    column.add(BLANK)
    column.done(BLANK, 48, 1.0)
    assert "(empty answer)" in column.body.value and BLANK not in column.body.value


def test_the_chart_catches_up_without_waiting_for_another_event(run):
    dashboard = Dashboard(run)
    dashboard.handle({"type": "log", "step": 1, "total_steps": 10, "loss": 3.0})
    assert dashboard.chart.train == [[1, 3.0]]
    dashboard.handle({"type": "log", "step": 2, "total_steps": 10, "loss": 2.0})  # too soon to send
    assert dashboard.chart.train == [[1, 3.0]]
    start, patience = time.monotonic(), dashboard.chart.interval + 5  # no more events come
    while len(dashboard.chart.train) < 2 and time.monotonic() < start + patience:
        time.sleep(0.02)
    caught_up = time.monotonic() - start
    assert dashboard.chart.train == [[1, 3.0], [2, 2.0]]
    assert caught_up < dashboard.chart.interval + 0.5


def test_compare_panel_fits_hides_unused_sampling_and_clears_refused_columns(runs_dir):
    panel = ComparePanel("Describe the red lamp.")
    controls, choices = panel.widget.children[1], panel.widget.children[2]
    assert controls.layout.flex_flow == choices.layout.flex_flow == "row wrap"
    assert panel.columns.layout.width is None and panel.prompt.layout.width == "auto"
    assert panel.temperature.layout.display == panel.top_p.layout.display == "none"  # greedy
    panel.sampling.value = "sample"
    assert panel.temperature.layout.display is None
    assert panel.generate() is None  # no model loaded: refused
    assert "no model is loaded yet" in panel.message.value and panel.columns.children == ()


@pytest.fixture
def trained(tiny_model_dir, records, runs_dir):
    return lora_magic.train(model=tiny_model_dir, data=records, steps=1, eval_fraction=0, name="chatty").wait(
        120
    )


def test_the_chat_panel_keeps_the_conversation_and_switches_models(trained):
    panel = ChatPanel(sampling=Sampling(max_new_tokens=3))
    assert panel.adapter.options == (BASE, "chatty") and panel.adapter.value == "chatty"
    panel.message.value = "Describe product 1."
    assert panel.send().name == "chatty" and panel.message.value == ""
    panel.adapter.value = BASE
    panel.message.value = "And product 2?"
    assert panel.send().name == BASE
    turns = panel.conversation.turns
    assert [t.get("adapter") for t in turns] == [None, "chatty", None, BASE]
    assert panel.transcript.value.count("lora-magic-turn") == 4 and "<b>chatty</b>" in panel.transcript.value
    session().take("run 'x' is training")
    try:
        panel.message.value = "More?"
        assert panel.send() is None and "while run &#x27;x&#x27; is training" in panel.status.value
    finally:
        session().release("run 'x' is training")
    assert panel.transcript.value.count("lora-magic-turn") == 4  # no half turn left behind
    panel.clear_button.click()
    assert panel.conversation.turns == [] and "No messages yet" in panel.transcript.value
