"""Training progress as compact text lines and a final static plot, where no widget frontend exists
(terminal IPython, nbclient/nbconvert/papermill execution, plain Python)."""

from __future__ import annotations

import base64
import sys
import textwrap
from typing import TextIO

from ..core.events import EVAL, LOG, PAUSED, PROBE, ROLLBACK, STATUS, WARNING
from ..training.run import Run
from . import summary
from .loss_plot import LossPlot


class TextProgress:
    def __init__(self, run: Run, out: TextIO | None = None, lines: int = 10):
        self.run, self.out, self.lines = run, out, lines
        self.plot = LossPlot()
        self.introduced = False

    def say(self, text: str) -> None:
        print(f"[{self.run.name}] {text}", file=self.out or sys.stdout, flush=True)

    def handle(self, event: dict) -> None:
        self.plot.add(event)
        kind = event["type"]
        if kind == LOG and not self.introduced:
            self.introduced = True
            quantization = (
                "" if self.run.config.quantization == "none" else f" ({self.run.config.quantization})"
            )
            self.say(f"{self.run.config.model}{quantization}, {summary.trainable(self.run)}")
        if kind == LOG:
            every = max(1, event["total_steps"] // self.lines)
            step = event["step"]
            if step == 1 or step % every == 0 or step == event["total_steps"]:
                self.say(summary.progress(event))
        elif kind == EVAL:
            self.say(f"step {event['step']}: eval loss {event['eval_loss']:.4f}")
        elif kind == PROBE:
            self.say(
                f"probe at step {event['step']}: {event['prompt']!r}\n"
                f"    base:    {textwrap.shorten(event['base'], 100)}\n"
                f"    adapter: {textwrap.shorten(event['adapter'], 100)}"
            )
        elif kind == WARNING:
            self.say(f"warning at step {event['step']}: {event['message']}")
        elif kind == ROLLBACK:
            self.say(
                f"rolled back to the weights of step {event['step']} (eval loss {event['eval_loss']:.4f})"
            )
        elif kind == STATUS and event["status"] == PAUSED:
            self.say(f"paused at step {event['step']}")

    def stop(self) -> None:
        self.run.stop()
        self.say("stopping after this step; the adapter will be saved")

    def finish(self) -> None:
        for line in summary.final(self.run):
            self.say(line)
        if not self.plot.train:
            return
        (first, start), (last, end) = self.plot.train[0], self.plot.train[-1]
        line = f"loss curve: {start:.4f} at step {first} → {end:.4f} at step {last}"
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            self.say(line)
            return
        # the plot where the frontend shows images, the line where it shows only text (a terminal)
        png = base64.b64encode(self.plot.png()).decode("ascii")
        display({"image/png": png, "text/plain": f"[{self.run.name}] {line}"}, raw=True)
