"""The live loss chart: the points it sends the browser, how often, and the picture it leaves."""

from __future__ import annotations

import itertools
import time

import pytest

from lora_magic.core.results import smooth
from lora_magic.widgets import LossChart, LossPlot
from lora_magic.widgets.loss_chart import Buckets

PNG = b"\x89PNG\r\n\x1a\n"
SYNCED = {"train", "smoothed", "evals", "references"}


def log(step: int, loss: float) -> dict:
    return {"type": "log", "step": step, "loss": loss, "total_steps": 100}


def sends(chart: LossChart) -> list[tuple[float, list]]:
    """(time, train points) of each update of the chart, as it happens."""
    seen: list[tuple[float, list]] = []
    chart.observe(lambda change: seen.append((time.monotonic(), change["new"])), names=["train"])
    return seen


def test_the_chart_sends_the_points_smoothed_in_python_and_the_evals():
    chart = LossChart(smoothing=0.8)
    losses = [3.0, 2.0, 1.5, 1.0]
    for step, loss in enumerate(losses, 1):
        chart.add(log(step, loss))
    chart.add({"type": "probe", "step": 4, "prompt": "p", "base": "", "adapter": ""})
    chart.add({"type": "eval", "step": 4, "eval_loss": 1.2})
    chart.flush()
    assert chart.train == [[1, 3.0], [2, 2.0], [3, 1.5], [4, 1.0]]
    assert chart.smoothed == smooth(losses, 0.8)
    assert chart.evals == [[4, 1.2]]
    state = chart.get_state()  # what goes to the browser
    assert state.keys() >= SYNCED and state["train"] == chart.train
    assert "lora-magic-loss-chart" in chart._dom_classes
    assert chart._esm.strip() and "export default" in chart._esm  # the module the browser draws with


def test_a_resumed_runs_superseded_steps_are_replaced():
    chart = LossChart()
    for step in (1, 2, 3, 4):
        chart.add(log(step, 10.0 - step))
    chart.add({"type": "status", "status": "running", "step": 2, "resumed_from": 2})
    for step in (3, 4, 5):
        chart.add(log(step, 5.0 - step / 10))
    chart.flush()
    assert chart.train == [[1, 9.0], [2, 8.0], [3, 4.7], [4, 4.6], [5, 4.5]]


def test_long_curves_are_bucket_means_bounded_in_size_and_end_at_the_last_point():
    chart = LossChart(limit=500)
    for step in range(1, 2002):
        chart.add(log(step, 3.0 - step / 1000))
    chart.flush()
    assert 250 <= len(chart.train) == len(chart.smoothed) <= 500
    assert chart.train[-1] == [2001, 3.0 - 2001 / 1000]  # the newest loss, not an average
    assert chart.train[0] == [4.5, pytest.approx(3.0 - 4.5 / 1000)]  # the mean of steps 1 to 8
    steps = [step for step, _ in chart.train]
    assert steps == sorted(steps)
    assert chart.smoothed[-1] == smooth([3.0 - step / 1000 for step in range(1, 2002)])[-1]


def test_buckets_double_in_length_and_keep_the_newest_point():
    points = Buckets(limit=4)
    for step in range(1, 11):
        points.add((step, 2.0 * step))
        assert len(points.points()) <= 4
    # runs of 4, 4 and 2 points (1-4, 5-8, 9-10), then step 10 itself
    assert points.points() == [[2.5, 5.0], [6.5, 13.0], [9.5, 19.0], [10, 20.0]]
    gaps = Buckets(limit=10)
    for point in [(1, 2.0), (2, float("nan")), (3, float("inf"))]:
        gaps.add(point)
    assert gaps.points() == [[1, 2.0], [2, None], [3, None]]  # JSON has no NaN: a gap


def test_updates_are_at_most_one_per_interval_and_the_last_one_always_arrives():
    chart = LossChart(interval=0.5)
    seen = sends(chart)
    for step in range(1, 51):
        chart.add(log(step, 1.0))
    assert len(seen) == 1 and seen[0][1] == [[1, 1.0]]  # the first at once, the rest held back
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # no more events come: a timer sends the held-back points
    assert len(seen) == 2 and seen[1][1][-1] == [50, 1.0]
    assert seen[1][0] - seen[0][0] < 0.5 + 0.5
    chart.add(log(51, 1.0))
    chart.flush()  # the run ended: sent now, however soon
    assert len(seen) == 3 and seen[2][1][-1] == [51, 1.0]
    chart.flush()
    assert len(seen) == 3  # nothing new, nothing sent


def test_a_steady_stream_of_steps_is_sent_twice_a_second_at_most():
    chart = LossChart(interval=0.5)
    seen = sends(chart)
    started = time.monotonic()
    step = 0
    while time.monotonic() < started + 2:
        step += 1
        chart.add(log(step, 1.0))
        time.sleep(0.01)
    chart.flush()
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(seen[:-1])]
    assert len(seen) <= 2 / 0.5 + 2 and all(gap >= 0.5 - 0.01 for gap in gaps)
    assert seen[-1][1][-1] == [step, 1.0]


def test_the_picture_is_matplotlibs_png_of_the_same_curves_with_the_references():
    chart = LossChart()
    assert chart.png() == b""  # nothing to draw yet: no picture, and no drawing
    other = [(1, 3.5), (2, 3.0), (3, 2.0)]
    chart.add_reference("r=4", other)
    events = [log(1, 3.0), log(2, 2.0), {"type": "eval", "step": 2, "eval_loss": 2.5}]
    for event in events:
        chart.add(event)
    assert chart.references == [
        {
            "label": "r=4",
            "points": [[step, value] for (step, _), value in zip(other, smooth([3.5, 3.0, 2.0]))],
        }
    ]
    plot = LossPlot()
    plot.add_reference("r=4", other)
    for event in events:
        plot.add(event)
    picture = chart.png()
    assert picture.startswith(PNG) and picture == plot.png()
