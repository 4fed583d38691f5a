"""The live loss chart: the kernel sends the points, the browser draws them (loss_chart.js, as SVG).

A draw on the kernel's side would take a core from training on a CPU; sending a few hundred numbers
does not. Each curve is sent as at most `limit` points, and the points at most every `interval`
seconds: an update that comes sooner is sent when it falls due, by a timer if no other event comes,
and `flush()` sends the last one at once. The smoothing is core.results.smooth, done here, so the
browser only draws. For a saved notebook, `png()` draws the same curves once with matplotlib.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import anywidget
import traitlets as t

from ..core.events import EVAL, LOG, Curve, History
from ..core.results import SMOOTHING, smooth
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
        self._pending = False  # the history has points that are not sent yet
        self._last_sent = -math.inf
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # events come from the main thread, the worker's and the timer's

    def add(self, event: dict) -> None:
        """Take a run event; a changed curve is sent now, or when the interval allows."""
        with self._lock:
            superseded = self.history.add(event)
            kind = event["type"]
            if superseded or (kind == LOG and event.get("loss") is not None) or kind == EVAL:
                self._pending = True
                self._send_when_due()

    def add_reference(self, label: str, losses: Curve) -> None:
        """Another run's train loss, drawn smoothed and dashed behind this run's (a sweep's finished runs)."""
        with self._lock:
            self.reference_losses.append((label, losses))
            smoothed = smooth([loss for _, loss in losses], self.smoothing)
            points = downsample([(step, value) for (step, _), value in zip(losses, smoothed)], self.limit)
            self.references = [*self.references, {"label": label, "points": points}]

    def flush(self) -> None:
        """Send what is pending now (the run ended)."""
        with self._lock:
            if self._pending:
                self._send_points()

    def png(self) -> bytes:
        """The whole curves drawn by matplotlib, for the static picture; b"" while there are none."""
        with self._lock:
            if not (self.history.curve(LOG) or self.history.curve(EVAL) or self.reference_losses):
                return b""
            plot = LossPlot(self.smoothing)
            for label, losses in self.reference_losses:
                plot.add_reference(label, losses)
            for event in self.history.events:
                plot.add(event)
        return plot.png()

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
        train = self.history.curve(LOG)
        smoothed = smooth([loss for _, loss in train], self.smoothing)
        points = downsample([(step, loss, mean) for (step, loss), mean in zip(train, smoothed)], self.limit)
        with self.hold_sync():  # one message for the three curves
            self.train = [[step, loss] for step, loss, _ in points]
            self.smoothed = [mean for _, _, mean in points]
            self.evals = downsample(self.history.curve(EVAL), self.limit)
        self._pending = False
        self._last_sent = time.monotonic()


def downsample(points: list[tuple], limit: int) -> list[list]:
    """At most `limit` points: the means of runs of consecutive points, then the last point as it is.
    Values that are not finite become None (JSON has no NaN): a gap in the line."""
    if len(points) > limit:
        head, buckets = points[:-1], limit - 1
        runs = (head[len(head) * i // buckets : len(head) * (i + 1) // buckets] for i in range(buckets))
        points = [tuple(sum(column) / len(run) for column in zip(*run)) for run in runs] + [points[-1]]
    return [[value if math.isfinite(value) else None for value in point] for point in points]
