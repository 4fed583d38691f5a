"""The loss plot: train, smoothed train and eval loss drawn to PNG with matplotlib's object API.

It is drawn once a run has ended: the picture a saved notebook keeps of the live chart
(loss_chart.py) and the text progress's final plot. pyplot is never used: it keeps global figures
and picks a GUI backend, neither of which belongs in a kernel's threads.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.events import EVAL, LOG, Curve, History
from ..core.results import SMOOTHING, smooth


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
