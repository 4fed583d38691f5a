"""The loss plot: train, smoothed train and eval loss drawn to PNG with matplotlib's object API.

pyplot is never used: it keeps global figures and picks a GUI backend, neither of which belongs in
a training thread. Drawing is throttled by its own measured cost (see Throttle).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.events import EVAL, LOG, Curve, History
from ..core.results import SMOOTHING, smooth


class Throttle:
    """Allows an action only as often as keeps its share of wall time under `budget`, but at least
    every `max_interval` seconds, so what it draws is never far behind.

    After an action that took `cost` seconds the next is due `cost / budget` seconds later (never
    sooner than `min_interval`, never later than `max_interval`), so a 20 ms draw with a 1 % budget
    happens at most every 2 s, and a slow one on a busy machine still every 10 s. The budget is
    small because on a CPU the draw also takes a core from the training's threads.
    """

    def __init__(
        self,
        budget: float = 0.01,
        min_interval: float = 0.5,
        max_interval: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.budget, self.clock = budget, clock
        self.min_interval, self.max_interval = min_interval, max_interval
        self.next_time = float("-inf")
        self.spent = 0.0

    def due(self) -> bool:
        return self.clock() >= self.next_time

    def wait(self) -> float:
        """Seconds until the action is due (0 when it is)."""
        return max(0.0, self.next_time - self.clock())

    def run(self, action: Callable[[], object]) -> None:
        start = self.clock()
        action()
        end = self.clock()
        self.spent += end - start
        self.next_time = end + min(self.max_interval, max(self.min_interval, (end - start) / self.budget))


class LossPlot:
    """Loss curves of one run's history; `png()` renders them, `_repr_png_` shows them in any IPython."""

    def __init__(self, smoothing: float = SMOOTHING, width: float = 6.4, height: float = 2.6, dpi: int = 80):
        self.smoothing = smoothing
        self.history = History()
        self.references = 0  # other runs' curves drawn behind this one's
        self.figure = Figure(figsize=(width, height), dpi=dpi)
        self.figure.subplots_adjust(left=0.13, right=0.98, top=0.95, bottom=0.18)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.axes.set_xlabel("step")
        self.axes.set_ylabel("loss")
        self.axes.grid(alpha=0.3)
        (self.train_line,) = self.axes.plot([], [], color="tab:blue", alpha=0.3, label="train")
        (self.smooth_line,) = self.axes.plot([], [], color="tab:blue", label="train (smoothed)")
        (self.eval_line,) = self.axes.plot([], [], "o-", color="tab:orange", label="eval")
        self.axes.legend(loc="upper right", fontsize="small")

    @property
    def train(self) -> Curve:
        return self.history.curve(LOG)

    @property
    def eval(self) -> Curve:
        return self.history.curve(EVAL)

    def add_reference(self, label: str, losses: Curve) -> None:
        """Another run's smoothed train loss, drawn faintly behind this run's (a sweep's finished runs)."""
        steps = [s for s, _ in losses]
        colour = f"C{2 + self.references % 8}"  # C0 and C1 are this run's train and eval curves
        self.references += 1
        self.axes.plot(steps, smooth([v for _, v in losses], self.smoothing), "--", color=colour, label=label)
        self.axes.legend(loc="upper right", fontsize="x-small")

    def add(self, event: dict) -> bool:
        """Take a run event; True if it changed the curves (a point, or a resume that superseded some)."""
        superseded = self.history.add(event)
        return superseded or (event["type"] == LOG and event.get("loss") is not None) or event["type"] == EVAL

    def smoothed(self) -> list[float]:
        return smooth([loss for _, loss in self.train], self.smoothing)

    def png(self) -> bytes:
        train, evals = self.train, self.eval
        steps = [s for s, _ in train]
        self.train_line.set_data(steps, [loss for _, loss in train])
        self.smooth_line.set_data(steps, smooth([loss for _, loss in train], self.smoothing))
        self.eval_line.set_data([s for s, _ in evals], [loss for _, loss in evals])
        self.axes.relim()
        self.axes.autoscale_view()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()
