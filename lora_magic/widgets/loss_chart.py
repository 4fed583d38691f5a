"""The live loss chart: the kernel sends the points, the browser draws them (loss_chart.js, as SVG).

A draw on the kernel's side would take a core from training on a CPU; sending a few hundred numbers
does not. Each curve is sent as at most `limit` points (Buckets), and the points at most every
`interval` seconds: an update that comes sooner is sent when it falls due, by a timer if no other
event comes, and `flush()` sends the last one at once. Taking an event and sending an update cost
the same however long the run. The smoothing is core.results' moving average, done here, so the
browser only draws. For a saved notebook, `png()` draws the whole curves once with matplotlib.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import anywidget
import traitlets as t

from ..core.events import EVAL, LOG, Curve, History
from ..core.results import SMOOTHING, MovingAverage
from .loss_plot import LossPlot

LIMIT = 500  # points per curve in one update
INTERVAL = 0.5  # seconds between updates


class LossChart(anywidget.AnyWidget):
    _esm = Path(__file__).with_name("loss_chart.js")
    train = t.List().tag(sync=True)  # [step, loss]
    smoothed = t.List().tag(sync=True)  # the smoothed loss at each step of `train`
    evals = t.List().tag(sync=True)  # [step, eval loss]
    references = t.List().tag(sync=True)  # {"label", "points": [step, smoothed loss]}: other runs

    def __init__(self, smoothing: float = SMOOTHING, limit: int = LIMIT, interval: float = INTERVAL):
        super().__init__()
        self.add_class("lora-magic-loss-chart")
        self.smoothing, self.limit, self.interval = smoothing, limit, interval
        self.history = History()
        self.reference_losses: list[tuple[str, Curve]] = []
        self._start_curves()
        self._pending = False  # points taken that are not sent yet
        self._last_sent = -math.inf
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # events come from the main thread, the worker's and the timer's

    def add(self, event: dict) -> None:
        """Take a run event; a changed curve is sent now, or when the interval allows."""
        with self._lock:
            if self.history.add(event):  # a resume superseded steps: the curves again, without them
                self._start_curves()
                self._take(self.history.events)
                self._pending = True
            else:
                self._take([event])
            if self._pending:
                self._send_when_due()

    def add_reference(self, label: str, losses: Curve) -> None:
        """Another run's train loss, drawn smoothed and dashed behind this run's (a sweep's finished runs)."""
        with self._lock:
            self.reference_losses.append((label, losses))
            average, points = MovingAverage(self.smoothing), Buckets(self.limit)
            for step, loss in losses:
                points.add((step, average.add(loss)))
            self.references = [*self.references, {"label": label, "points": points.points()}]

    def flush(self) -> None:
        """Send what is pending now (the run ended)."""
        with self._lock:
            if self._pending:
                self._send_points()

    def png(self) -> bytes:
        """The whole curves drawn by matplotlib, for the static picture; b"" while there are none."""
        with self._lock:
            if not (self._train.points() or self._evals.points() or self.reference_losses):
                return b""
            plot = LossPlot(self.smoothing)
            for label, losses in self.reference_losses:
                plot.add_reference(label, losses)
            for event in self.history.events:
                plot.add(event)
        return plot.png()

    def _start_curves(self) -> None:
        self._average = MovingAverage(self.smoothing)
        self._train = Buckets(self.limit)  # (step, loss, smoothed loss)
        self._evals = Buckets(self.limit)

    def _take(self, events: list[dict]) -> None:
        taken = History(events)  # its curves keep the points a curve may have, as everywhere
        for step, loss in taken.curve(LOG):
            self._train.add((step, loss, self._average.add(loss)))
            self._pending = True
        for point in taken.curve(EVAL):
            self._evals.add(point)
            self._pending = True

    def _send_when_due(self) -> None:
        wait = self._last_sent + self.interval - time.monotonic()
        if wait <= 0:
            self._send_points()
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._when_due)
            self._timer.daemon = True
            self._timer.start()

    def _when_due(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending:
                self._send_points()

    def _send_points(self) -> None:
        train = self._train.points()
        with self.hold_sync():  # one message for the three curves
            self.train = [[step, loss] for step, loss, _ in train]
            self.smoothed = [smoothed for _, _, smoothed in train]
            self.evals = self._evals.points()
        self._pending = False
        self._last_sent = time.monotonic()


class Buckets:
    """A growing curve as at most `limit` points: the means of runs of consecutive points, then the
    newest point as it is. The runs double in length when there would be too many, so adding a
    point and reading the points cost the same however long the curve."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 1  # size: the points a run holds when full
        self.runs: list[list[float]] = []  # [count, then the sum of each coordinate]
        self.newest: tuple[float, ...] = ()

    def add(self, point: tuple[float, ...]) -> None:
        self.newest = point
        if self.runs and self.runs[-1][0] < self.size:
            run = self.runs[-1]
            for i, value in enumerate(point, 1):
                run[i] += value
            run[0] += 1
        else:
            self.runs.append([1, *point])
        if len(self.runs) >= self.limit:  # one place is kept for the newest point
            pairs = zip(self.runs[::2], self.runs[1::2])
            merged = [[a + b for a, b in zip(first, second)] for first, second in pairs]
            self.runs = merged + self.runs[len(merged) * 2 :]
            self.size *= 2

    def points(self) -> list[list]:
        """The points; those that are not finite are None (JSON has no NaN): a gap in the line."""
        points = [[total / run[0] for total in run[1:]] for run in self.runs]
        if self.runs and self.runs[-1][0] > 1:
            points.append(list(self.newest))
        return [[value if math.isfinite(value) else None for value in point] for point in points]
