"""The static picture a widget leaves in a saved notebook: what it shows, without its controls."""

from __future__ import annotations

import base64

import ipywidgets as w

from lora_magic.widgets import LossChart, LossPlot
from lora_magic.widgets.static import snapshot


def test_the_picture_shows_the_content_and_leaves_out_controls_and_hidden_widgets():
    plot = LossPlot()
    plot.add({"type": "log", "step": 1, "loss": 2.0})
    png = plot.png()
    chart = LossChart()
    chart.add({"type": "log", "step": 1, "loss": 3.0})
    hidden = w.HTML("secret", layout=w.Layout(display="none"))
    panel = w.VBox(
        [
            w.HTML("<b>run-1</b> · model"),
            w.HBox([w.IntProgress(value=3, max=4, bar_style="success"), w.Button(description="Stop")]),
            w.Image(value=png, format="png"),
            chart,
            LossChart(),  # no curves yet: no picture
            w.Textarea(value="the prompt"),
            w.HBox([w.VBox([w.HTML("<b>base</b>"), w.HTML("an answer")]), hidden]),
            w.FloatSlider(description="temperature"),
            w.Password(value="not shown"),
        ]
    )
    panel.add_class("lora-magic-dashboard")
    markup, text = snapshot(panel)
    assert markup.startswith("<div class='lora-magic-static'><div class='lora-magic-dashboard'>")
    assert f"src='data:image/png;base64,{base64.b64encode(png).decode()}'" in markup
    # the chart, drawn by the browser while live, as the PNG of its curves
    assert f"src='data:image/png;base64,{base64.b64encode(chart.png()).decode()}'" in markup
    assert markup.count("<img") == 2
    assert "width:75%" in markup and "#4caf50" in markup  # the bar, 3 of 4, in the success colour
    assert "<i>the prompt</i>" in markup
    for left_out in ("Stop", "temperature", "secret", "not shown"):
        assert left_out not in markup
    assert text == "run-1 · model\nthe prompt\nbase\nan answer"
