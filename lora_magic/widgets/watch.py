"""Following a run: the dashboard (or text) fed with its past events, then its new ones.

Foreground: the caller's (main) thread pumps events from a queue into the view until the run
ends; a kernel interrupt there stops the run gracefully and the pumping goes on to the end, so the
adapter is saved and the kernel stays usable. Background: the view is fed by the worker's
subscriber callback, which only sets widget traits, and `watch` returns at once.

Once the run has ended the dashboard's output is frozen into a static picture (static.py), always
from the main thread: at the end of the foreground pumping, or for a background run at the end of
the first cell that finishes after it (`freeze_finished`, run by the extension after every cell).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from ..core.events import FINISHED, STATUS
from ..training.run import Run
from .dashboard import Dashboard
from .frontend import use_widgets
from .static import Shown
from .text_progress import TextProgress

_unfrozen: list[tuple[Any, Shown]] = []  # background views, frozen once their run or sweep has ended


def watch(run: Run, background: bool = False, widgets: bool | None = None) -> Dashboard | None:
    """Show `run`'s progress; foreground blocks until it ends. Returns the dashboard, if any."""
    if widgets is None:
        widgets = use_widgets()
    if not widgets:
        view = TextProgress(run)
        if background:
            view.say("training in the background; run.wait() blocks until it ends, %lora watch follows it")
            return None
        pump(run, view)
        return None
    dashboard = Dashboard(run)
    dashboard.bind_controls()
    shown = Shown(dashboard.widget)
    shown.display()
    if background:
        follow(run, dashboard)
        remember_until_done(run, shown)
    else:
        try:
            pump(run, dashboard)
        finally:
            shown.freeze()
    return dashboard


def remember_until_done(work: Any, shown: Shown) -> None:
    """Freeze `shown` at the end of the first cell after `work` (a run, a sweep) is done."""
    _unfrozen.append((work, shown))


def freeze_finished() -> None:
    """Freeze the outputs of background dashboards whose run has ended. Main thread only."""
    for entry in [entry for entry in _unfrozen if entry[0].done]:
        _unfrozen.remove(entry)
        entry[1].freeze()


def pump(run: Run, view: Dashboard | TextProgress, poll: float = 0.25) -> None:
    """Feed `view` in this thread until the run ends; KeyboardInterrupt means stop."""
    events: queue.Queue = queue.Queue()
    unsubscribe = run.subscribe(events.put)
    past = list(run.events)
    replayed = {id(e) for e in past}  # events live in run.events, so their ids stay unique
    try:
        for event in past:
            view.handle(event)
        while not (run.done and events.empty()):
            try:
                try:
                    event = events.get(timeout=poll)
                except queue.Empty:
                    continue
                if id(event) not in replayed:
                    view.handle(event)
                if event["type"] == STATUS and event["status"] in FINISHED:
                    run.wait()  # its last moments publish nothing more: end without polling through them
            except KeyboardInterrupt:
                if not run.stops_on_interrupt:
                    break  # a run in another process trains on: only the watching ends
                view.stop()
    finally:
        unsubscribe()
        view.finish()


def follow(run: Run, view: Dashboard) -> None:
    """Feed `view` from the run's worker thread, after replaying what already happened."""
    lock = threading.Lock()
    replayed: set[int] = set()

    def on_event(event: dict) -> None:
        with lock:
            if id(event) not in replayed:
                view.handle(event)

    with lock:
        run.subscribe(on_event)
        past = list(run.events)
        replayed.update(id(e) for e in past)
        for event in past:
            view.handle(event)
        view.finish()
