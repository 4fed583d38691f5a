"""The loss plot and the throttle that bounds its drawing cost."""

from __future__ import annotations

import pytest

from lora_magic.widgets import LossPlot, Throttle

PNG = b"\x89PNG\r\n\x1a\n"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_waits_in_proportion_to_the_measured_cost():
    clock = Clock()
    throttle = Throttle(budget=0.02, min_interval=0.5, clock=clock)
    assert throttle.due()

    def draw():  # takes 30 ms of the fake clock
        clock.now += 0.03

    throttle.run(draw)
    assert throttle.spent == 0.03
    clock.now += 1.4  # 1.5 s after the end of a 30 ms draw is 2 %
    assert not throttle.due()
    clock.now += 0.1
    assert throttle.due()


def test_throttle_keeps_a_minimum_interval_for_cheap_actions():
    clock = Clock()
    throttle = Throttle(budget=0.02, min_interval=0.5, clock=clock)
    throttle.run(lambda: None)
    clock.now = 0.49
    assert not throttle.due()
    clock.now = 0.5
    assert throttle.due()


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


def test_throttle_never_waits_longer_than_its_maximum_interval():
    clock = Clock()
    throttle = Throttle(budget=0.02, min_interval=0.5, max_interval=2.0, clock=clock)

    def slow_draw():  # 300 ms on a busy machine: 2 % would mean waiting 15 s
        clock.now += 0.3

    throttle.run(slow_draw)
    assert throttle.wait() == pytest.approx(2.0)
    clock.now += 2.0
    assert throttle.due() and throttle.wait() == 0.0
