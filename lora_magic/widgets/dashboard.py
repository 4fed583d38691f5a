"""The live training dashboard shown by `%%finetune`: progress, loss chart, controls, probes, summary.

`handle(event)` only sets widget traits, so it may be called from the main thread (foreground
pumping) or from the run's worker thread (background). The loss chart sends its points to the
browser, which draws them (loss_chart.py).
"""

from __future__ import annotations

import html

import ipywidgets as w

from ..core.events import (
    COMPLETED,
    EVAL,
    FAILED,
    FINISHED,
    INTERRUPTED,
    LOG,
    PAUSED,
    PROBE,
    ROLLBACK,
    RUNNING,
    STATUS,
    STOPPED,
    WARNING,
)
from ..core.format import answer_html
from ..core.record import describe_cleaning, describe_estimate
from ..training.run import Run
from . import summary
from .frontend import route_to_subshell
from .loss_chart import LossChart

# on each cell, as JupyterLab right-aligns the cells of HTML tables (a saved notebook's picture)
CELL = "vertical-align:top;text-align:left"
BAR_STYLES = {COMPLETED: "success", STOPPED: "warning", FAILED: "danger", INTERRUPTED: "warning"}


class Dashboard:
    def __init__(self, run: Run):
        self.run = run
        self.chart = LossChart()
        self.probe_answers: dict[str, dict] = {}
        self.state, self.line, self.eval_line = run.status, "", ""
        self.last_log: dict | None = None
        self.header = w.HTML()
        self.progress = w.IntProgress(
            value=0, min=0, max=max(run.total_steps, 1), bar_style="info", layout=w.Layout(flex="1")
        )
        self.stats = w.HTML()
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            tooltip="Stop after this step; saves the adapter",
        )
        self.pause_button = w.Button(
            description="Pause", icon="pause", tooltip="Hold training after this step"
        )
        self.warning = w.HTML()
        self.rollback_button = w.Button(
            description="Roll back to best",
            icon="undo",
            button_style="warning",
            tooltip="Stop if training, and keep the adapter as it was at its lowest eval loss",
            layout=w.Layout(display="none"),
        )
        self.probes = w.HTML()
        self.summary = w.HTML()
        self.rollback_button.on_click(lambda _: self.rollback())
        self.stop_button.on_click(lambda _: self.stop())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.widget = w.VBox(
            [
                self.header,
                w.HBox([self.progress, self.stop_button, self.pause_button]),
                self.stats,
                w.HBox([self.warning, self.rollback_button]),
                self.chart,
                self.probes,
                self.summary,
            ],
            layout=w.Layout(max_width="900px"),
        )
        self.widget.add_class("lora-magic-dashboard")
        self._render_header()

    def bind_controls(self) -> bool:
        """Make the buttons answer while a cell is busy, where the kernel allows it (frontend.py)."""
        buttons = (self.stop_button, self.pause_button, self.rollback_button)
        return all([route_to_subshell(button) for button in buttons])

    # -- controls ------------------------------------------------------------------------------
    def stop(self) -> None:
        self.run.stop()
        if not self.run.done:
            self.stop_button.description, self.stop_button.disabled = "Stopping…", True
            self.pause_button.disabled = True
            self.state = "stopping after this step"
            self._render_stats()

    def rollback(self) -> None:
        self.run.rollback()
        self.rollback_button.disabled = True
        if self.run.done:  # a finished run no longer feeds this dashboard its events
            self.handle(self.run.events[-1])
        else:
            self.rollback_button.description = "Rolling back…"
            self.stop_button.disabled = self.pause_button.disabled = True

    def toggle_pause(self) -> None:
        if self.run.done:
            return
        if self.pause_button.description == "Resume":
            self.run.resume()
            self.pause_button.description, self.pause_button.icon = "Pause", "pause"
        else:
            self.run.pause()
            self.pause_button.description, self.pause_button.icon = "Resume", "play"

    # -- events --------------------------------------------------------------------------------
    def handle(self, event: dict) -> None:
        kind = event["type"]
        self.chart.add(event)
        if self.run.trainable_params and "trainable" not in self.header.value:
            self._render_header()
        if kind == LOG:
            self.progress.max = max(event["total_steps"], 1)
            self.progress.value = event["step"]
            self.last_log = event
            self.line = summary.progress(event)
        elif kind == EVAL:
            self.eval_line = f"eval loss {event['eval_loss']:.4f} at step {event['step']}"
        elif kind == PROBE:
            self.probe_answers[event["prompt"]] = event
            self._render_probes()
        elif kind == STATUS:
            self._render_status(event["status"])
        elif kind == WARNING:
            self._render_warning(event["message"])
            self.rollback_button.layout.display = "" if self.run.best else "none"
        elif kind == ROLLBACK:
            self._render_warning(
                f"rolled back to the weights of step {event['step']} (eval loss {event['eval_loss']:.4f})"
            )
            self.rollback_button.layout.display = "none"
        self._render_stats()
        if kind == STATUS and event["status"] in FINISHED:
            self.chart.flush()

    def finish(self) -> None:
        self.chart.flush()

    # -- rendering -----------------------------------------------------------------------------
    def _render_header(self) -> None:
        run, config = self.run, self.run.config
        parts = [f"<b>{html.escape(run.name)}</b>", html.escape(config.model)]
        if config.quantization != "none":
            parts.append(html.escape(config.quantization))
        if summary.trainable(run):
            parts.append(html.escape(summary.trainable(run)))
        if cleaned := describe_cleaning(run.store.read(run.name).get("cleaning")):
            parts.append(html.escape(cleaned))
        if estimate := describe_estimate(run.store.read(run.name).get("plan")):
            parts.append(html.escape(estimate))
        self.header.value = " · ".join(parts)

    def _render_stats(self) -> None:
        self.stats.value = html.escape(" · ".join(t for t in (self.state, self.line, self.eval_line) if t))

    def _render_status(self, status: str) -> None:
        self.state = status
        finished = status in FINISHED
        self.stop_button.disabled = self.pause_button.disabled = finished
        if status == PAUSED:
            self.pause_button.description, self.pause_button.icon = "Resume", "play"
        elif status == RUNNING:
            self.pause_button.description, self.pause_button.icon = "Pause", "pause"
            self.summary.value = ""
        if finished:
            self.progress.bar_style = BAR_STYLES[status]
            self.stop_button.description = "Stop"
            if self.last_log:
                self.line = summary.progress(self.last_log, finished=True)
            lines = [html.escape(line) for line in summary.final(self.run)]
            colour = "#b00020" if status == FAILED else "inherit"
            self.summary.value = f"<div style='color:{colour}'>" + "<br>".join(lines) + "</div>"

    def _render_warning(self, text: str) -> None:
        self.warning.value = (
            f"<div class='lora-magic-warning' style='color:#b35c00'>⚠ {html.escape(text)}</div>"
        )

    def _render_probes(self) -> None:
        rows = "".join(
            f"<tr><td style='{CELL}'>{html.escape(p['prompt'])}<br><small>step {p['step']}</small></td>"
            f"<td style='{CELL}'>{answer_html(p['base'])}</td>"
            f"<td style='{CELL}'>{answer_html(p['adapter'])}</td></tr>"
            for p in self.probe_answers.values()
        )
        self.probes.value = (
            "<table class='lora-magic-probes' style='table-layout:fixed;width:100%;text-align:left'>"
            f"<tr><th style='{CELL}'>probe</th><th style='{CELL}'>base</th><th style='{CELL}'>adapter</th></tr>"
            + rows
            + "</table>"
        )

    def __repr__(self) -> str:
        return f"<Dashboard of {self.run!r}>"
