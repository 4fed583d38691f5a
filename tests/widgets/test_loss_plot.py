"""The loss plot: the matplotlib picture of a run's curves."""

from __future__ import annotations

from lora_magic.widgets import LossPlot

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_takes_log_and_eval_events_and_renders_png():
    plot = LossPlot()
    assert not plot.add({"type": "probe", "step": 1, "prompt": "p", "base": "", "adapter": ""})
    for step, loss in enumerate([3.0, 2.0, 1.5, 1.0], 1):
        assert plot.add({"type": "log", "step": step, "loss": loss})
    first = plot.png()
    assert plot.add({"type": "eval", "step": 4, "eval_loss": 1.2})
    second = plot._repr_png_()
    assert first.startswith(PNG) and second.startswith(PNG)
    assert first != second
    assert plot.eval == [(4, 1.2)]


def test_smoothing_is_debiased_and_lags_behind_the_raw_loss():
    plot = LossPlot(smoothing=0.8)
    for step, loss in enumerate([4.0, 2.0, 2.0], 1):
        plot.add({"type": "log", "step": step, "loss": loss})
    smoothed = plot.smoothed()
    assert smoothed[0] == 4.0  # no pull towards zero at the start
    assert 2.0 < smoothed[2] < smoothed[1] < 4.0
