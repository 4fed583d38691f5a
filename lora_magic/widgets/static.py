"""Outputs that survive saving: each widget is shown in an output that also carries a static picture
of it, and when the widget has nothing more to show the output keeps only that picture.

A saved notebook holds outputs, not the kernel's widgets (JupyterLab saves no widget state by
default), so a plain widget output reopens as "model not found" and nbconvert, GitHub and nbviewer
show nothing. `Shown` displays a widget with a display id; its `freeze()`, called from the main
thread once the widget is final (a run ended, the answers are in), replaces the output by the
picture: HTML with any image inline, and plain text for text-only viewers. While live, the output
is what ipywidgets itself sends (the widget view and a text fallback), so every frontend picks the
live widget exactly as before.

The picture is drawn from the widget tree as it stands, so it always matches what was on screen:
HTML and labels as they are, images inline, the loss chart as the PNG of its curves, progress bars,
text areas, boxes as rows or columns with their CSS classes; controls (buttons, sliders, inputs)
and hidden widgets are left out.
"""

from __future__ import annotations

import base64
import html
import re
import uuid
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import ipywidgets as w
from IPython.display import display, update_display

from .loss_chart import LossChart

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
BAR_COLOURS = {
    "success": "#4caf50",
    "warning": "#ff9800",
    "danger": "#f44336",
    "info": "#2196f3",
    "": "#2196f3",
}
Picture = tuple[str, str]  # (HTML, plain text)


class Shown:
    """A widget on display, with its picture in the same output; `freeze()` leaves the picture alone."""

    def __init__(self, widget: w.Widget, picture: Callable[[], Picture] | None = None):
        self.widget = widget
        self.picture = picture or (lambda: snapshot(widget))
        self.display_id = uuid.uuid4().hex
        self.frozen = False

    def display(self) -> None:
        display(self._live(), raw=True, display_id=self.display_id)

    def freeze(self) -> None:
        """Replace the live widget by its picture. Main thread only.

        The widget itself stays open: shown inside another widget (the form's output area), it
        keeps living there, as that output is not the one replaced."""
        if self.frozen:
            return
        self.frozen = True
        markup, text = self.picture()
        update_display({"text/html": markup, "text/plain": text}, raw=True, display_id=self.display_id)

    def _live(self) -> dict[str, Any]:
        # ipywidgets 7 and 8 both send this bundle for a widget; 7 cannot take a display id itself.
        view = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}
        return {WIDGET_VIEW: view, "text/plain": self.picture()[1]}


# -- the picture -------------------------------------------------------------------------------------
def snapshot(widget: w.Widget) -> Picture:
    """(HTML, plain text) of what `widget` shows now."""
    markup = _html(widget)
    return f"<div class='lora-magic-static'>{markup}</div>", plain_text(markup)


def _html(widget: w.Widget) -> str:
    layout = getattr(widget, "layout", None)
    if layout is not None and (layout.display == "none" or layout.visibility == "hidden"):
        return ""
    if isinstance(widget, w.Box):
        parts = [part for part in (_html(child) for child in widget.children) if part]
        if not parts:
            return ""
        # the picture keeps the widget's classes, so what styles or finds the widget finds it too
        classes = f" class='{html.escape(' '.join(widget._dom_classes))}'" if widget._dom_classes else ""
        if isinstance(widget, w.HBox):
            cells = "".join(f"<div style='flex:1 1 0;min-width:0'>{part}</div>" for part in parts)
            return f"<div{classes} style='display:flex;gap:1em;align-items:flex-start'>{cells}</div>"
        return f"<div{classes}>" + "".join(f"<div>{part}</div>" for part in parts) + "</div>"
    if isinstance(widget, w.HTML | w.HTMLMath):
        return widget.value
    if isinstance(widget, w.Label):
        return html.escape(widget.value)
    if isinstance(widget, w.Image):
        return _image(widget.value, widget.format)
    if isinstance(widget, LossChart):  # drawn by the browser while live: drawn here once, as a PNG
        return _image(widget.png(), "png")
    if isinstance(widget, w.IntProgress | w.FloatProgress):
        return _bar(widget)
    if type(widget) in (w.Textarea, w.Text) and widget.value.strip():
        return f"<div style='white-space:pre-wrap'><i>{html.escape(widget.value.strip())}</i></div>"
    return ""  # controls: buttons, sliders, choices, inputs


def _image(value: bytes, kind: str) -> str:
    if not value:
        return ""
    data = base64.b64encode(value).decode("ascii")
    return f"<img src='data:image/{kind};base64,{data}' style='max-width:100%'>"


def _bar(progress: w.Widget) -> str:
    span = progress.max - progress.min
    share = 100 * (progress.value - progress.min) / span if span else 0
    colour = BAR_COLOURS.get(progress.bar_style or "", BAR_COLOURS[""])
    return (
        "<div style='background:#e0e0e0;height:0.6em;border-radius:0.3em;margin:0.3em 0'>"
        f"<div style='background:{colour};width:{share:.0f}%;height:100%;border-radius:0.3em'></div></div>"
    )


class _Text(HTMLParser):
    """The text of an HTML fragment, a line per block, table cells apart."""

    BLOCKS = ("br", "div", "p", "tr", "li", "table", "pre")

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("  ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
