"""A run as every view sees it: `Run` is the one handle of a fine-tuning run, whether it trains in
this kernel's thread, in worker processes (launch 'process' or 'accelerate'), or ended long ago.

Its state comes from its events: the trainer of this process hands them over as it publishes
them; for a run that another process trains, `follow()` reads them from the run store. Its
controls go to that trainer, or through the run's folder to the other process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..core.config import RunConfig
from ..core.errors import RunError
from ..core.events import ACTIVE, EVAL, INTERRUPTED, LOG, RUNNING, STATUS, WARNING, Curve, History
from ..core.record import stored_config
from ..core.store import WORKER_LOG, RunStore

POLL_SECONDS = 0.5  # how often a run trained by another process is read from the store
Subscriber = Callable[[dict[str, Any]], None]


class Trainer(Protocol):
    """What trains a run in this process (training/trainer.py): the run's controls go to it."""

    best: Any  # the adapter's weights at its lowest eval loss so far, with their step and loss

    def stop(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def rollback(self) -> None: ...


class Run:
    """A fine-tuning run: its progress, events and controls."""

    def __init__(self, name: str, config: RunConfig, store: RunStore, trainer: Trainer | None = None):
        self.name, self.config, self.store = name, config, store
        self.path = store.path(name)
        self.trainer = trainer  # None when another process trains it
        self.status = RUNNING
        self.step, self.total_steps = 0, 0
        self.history = History()
        self.metrics: dict[str, float] = {}
        self.error: str | None = None
        self.warning: str | None = None  # set when the run diverges or its loss is NaN/inf
        self.trainable_params = self.total_params = 0
        self._done = threading.Event()
        self._subscribers: list[Subscriber] = []

    # -- observing -----------------------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        """The events of the run's one history (what a resume superseded left out)."""
        return self.history.events

    @property
    def losses(self) -> Curve:
        return self.history.curve(LOG)

    @property
    def eval_losses(self) -> Curve:
        return self.history.curve(EVAL)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def adapter_path(self) -> Path | None:
        adapter = self.path / "adapter"
        return adapter if (adapter / "adapter_config.json").is_file() else None

    @property
    def best(self) -> Any:
        """The weights a rollback restores (step, eval_loss), when this process trains the run."""
        return self.trainer.best if self.trainer else None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` for each new event (from the thread that takes it in); returns an
        unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def receive(self, event: dict[str, Any]) -> None:
        """Take in the run's next event: its history, its state, and every subscriber."""
        self.history.add(event)
        kind = event.get("type")
        if kind == LOG:
            self.step, self.total_steps = event["step"], event.get("total_steps") or self.total_steps
        elif kind == STATUS:
            self.status, self.step = event["status"], event.get("step", self.step)
            self.error = event.get("error", self.error)
            self.metrics = event.get("metrics", self.metrics)
        elif kind == WARNING:
            self.warning = event.get("message")
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken view must not stop the run or its other views
                import logging

                logging.getLogger(__name__).exception("a subscriber of run %s failed", self.name)

    def finish(self) -> None:
        """The run has ended and every event of it is in."""
        self._done.set()

    # -- controlling ---------------------------------------------------------------------------
    @property
    def stops_on_interrupt(self) -> bool:
        """Whether a kernel interrupt while it is watched stops it: a run training in another
        process lives beyond the kernel, and an interrupt ends only the watching."""
        return self.trainer is not None

    def stop(self) -> None:
        """Stop after the current step; the adapter and a resumable checkpoint are saved."""
        if self.trainer:
            self.trainer.stop()
        elif not self.done:
            self.store.request_stop(self.name)

    def pause(self) -> None:
        """Hold training after the current step, keeping the optimizer state, until resume()."""
        if self.done:
            raise RunError(f"run {self.name!r} is {self.status}; only a running run can be paused")
        if self.trainer:
            self.trainer.pause()
        else:
            self.store.request_pause(self.name)

    def resume(self) -> None:
        if self.trainer:
            self.trainer.resume()
        else:
            self.store.request_pause(self.name, paused=False)

    def rollback(self) -> None:
        """Put the adapter back to its weights at the lowest eval loss. A running run stops first
        (after the current step) and saves the rolled-back adapter."""
        if self.trainer is None:
            raise RunError(
                f"run {self.name!r} trains in another process, which holds its best weights; stop it and "
                "resume it in this kernel (lora_magic.resume) to roll back"
            )
        self.trainer.rollback()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends. Ctrl-C / a kernel interrupt stops a run of this kernel
        gracefully; for a run of another process it ends the waiting, not the run."""
        if self.stops_on_interrupt:
            wait_or_stop(self._done, self.stop, timeout)
        else:
            with contextlib.suppress(KeyboardInterrupt):
                self._done.wait(timeout)
        return self

    def __repr__(self) -> str:
        progress = f"step {self.step}/{self.total_steps}" if self.total_steps else "starting"
        losses = self.losses
        loss = f", loss {losses[-1][1]:.4f}" if losses else ""
        return f"<Run {self.name!r}: {self.status}, {progress}{loss}, {self.path}>"


def wait_or_stop(done: threading.Event, stop: Callable[[], None], timeout: float | None) -> None:
    """Wait for `done`; a Ctrl-C / kernel interrupt calls `stop` and waits for the graceful end."""
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        stop()
        done.wait()


def follow(store: RunStore, name: str) -> Run:
    """Run `name` of the store, followed through its folder: for a run that another process trains
    (a worker, another kernel), or one that has ended."""
    record = store.read(name)
    run = Run(name, stored_config(record), store)
    reader = _Reader(run)
    reader.read(record)
    if not run.done:
        threading.Thread(target=reader.loop, name=f"lora-follow-{name}", daemon=True).start()
    return run


class _Reader:
    """Feeds a Run from its folder: the events written since the last read, then run.json."""

    def __init__(self, run: Run):
        self.run, self.offset = run, 0

    def loop(self) -> None:
        while not self.run.done:
            time.sleep(POLL_SECONDS)
            self.read(self.run.store.read(self.run.name))

    def read(self, record: dict[str, Any]) -> None:
        """An ended run's record is read first, so the events that led to its end are all in
        before it counts as done."""
        run = self.run
        events, self.offset = run.store.events(run.name, self.offset)
        for event in events:
            run.receive(event)
        run.status, run.step = record["status"], record.get("step", 0)
        run.total_steps = record.get("total_steps") or 0
        run.metrics, run.error = record.get("metrics") or {}, record.get("error")
        run.warning = record.get("warning")
        run.trainable_params = record.get("trainable_params") or 0
        run.total_params = record.get("total_params") or 0
        if run.status in ACTIVE:
            return
        last = run.events[-1] if run.events else {}
        if run.status == INTERRUPTED and last.get("status") != INTERRUPTED:
            error = f"its worker process ended without recording an end; see {run.path / WORKER_LOG}"
            run.receive(
                {"time": time.time(), "type": STATUS, "status": INTERRUPTED, "step": run.step, "error": error}
            )
        run.finish()
