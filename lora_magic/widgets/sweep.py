"""Following a sweep: the current run's dashboard, with the finished runs' loss curves behind its
own, and the sweep's table growing under it (text progress and a final table without widgets)."""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING

import ipywidgets as w

from ..training.run import Run
from .dashboard import Dashboard
from .static import Shown
from .text_progress import TextProgress
from .watch import follow, pump, remember_until_done

if TYPE_CHECKING:
    from ..experiments.sweep import Sweep


class SweepView:
    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.header = w.HTML()
        self.current = w.VBox()
        self.table = w.HTML()
        self.widget = w.VBox([self.header, self.current, self.table], layout=w.Layout(max_width="900px"))
        self.widget.add_class("lora-magic-sweep")
        self.dashboard: Dashboard | None = None
        self.show_header()
        self.show_table()

    def show_header(self, run: Run | None = None) -> None:
        sweep = self.sweep
        parts = [f"<b>sweep {html.escape(sweep.name)}</b>", f"{len(sweep.points)} runs"]
        if sweep.skipped:
            parts.append(f"{len(sweep.skipped)} already completed, skipped")
        if run is not None:
            number = next(i for i, p in enumerate(sweep.points, 1) if p.name == run.name)
            knobs = ", ".join(f"{k}={v}" for k, v in sweep.knobs(run.name).items())
            parts.append(f"now run {number} of {len(sweep.points)}: {html.escape(knobs)}")
        elif sweep.done:
            parts.append(html.escape(sweep.status))
        self.header.value = " · ".join(parts)

    def show_run(self, run: Run) -> Dashboard:
        """A dashboard for `run`, with the curves of the sweep's runs that have finished."""
        self.dashboard = Dashboard(run)
        for name, losses in self.sweep.finished_losses():
            if name == run.name:
                continue
            label = ", ".join(f"{k}={v}" for k, v in self.sweep.knobs(name).items())
            self.dashboard.chart.add_reference(label, losses)
        self.dashboard.bind_controls()
        self.current.children = (self.dashboard.widget,)
        self.show_header(run)
        return self.dashboard

    def show_table(self) -> None:
        self.table.value = self.sweep._repr_html_()


def watch_sweep(sweep: Sweep, background: bool = False, widgets: bool = True) -> None:
    """Show `sweep`'s progress; foreground blocks until it ends (interrupt = stop the sweep)."""
    if not widgets:
        if background:
            print(f"sweep {sweep.name!r}: training in the background; sweep.wait() blocks until it ends")
            return
        run = None
        while (run := sweep.next_run(run)) is not None:
            view = TextProgress(run)
            view.say(
                f"sweep {sweep.name!r}: " + ", ".join(f"{k}={v}" for k, v in sweep.knobs(run.name).items())
            )
            pump(run, view)
        print(f"sweep {sweep.name!r}: {sweep.status}\n{sweep.table().to_string()}")
        return
    view = SweepView(sweep)
    shown = Shown(view.widget)
    shown.display()
    if background:
        threading.Thread(target=_follow_runs, args=(sweep, view), daemon=True).start()
        remember_until_done(sweep, shown)
        return
    try:
        run = None
        while (run := _next_run(sweep, run)) is not None:
            pump(run, view.show_run(run))
            view.show_table()
        view.show_header()
        view.show_table()
    finally:
        shown.freeze()


def _next_run(sweep: Sweep, run: Run | None) -> Run | None:
    """The sweep's next run; an interrupt while waiting for it stops the sweep."""
    try:
        return sweep.next_run(run)
    except KeyboardInterrupt:
        sweep.stop()
        return sweep.next_run(run)


def _follow_runs(sweep: Sweep, view: SweepView) -> None:
    run = None
    while (run := sweep.next_run(run)) is not None:
        follow(run, view.show_run(run))
        run.wait()
        view.show_table()
    view.show_header()
    view.show_table()
