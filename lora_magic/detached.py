"""Runs beyond the kernel: a worker process (launch='process'), or several under Accelerate
(launch='accelerate'), trains a run from its folder while this kernel follows it through the store.

`launch()` starts the worker in a session of its own, so a kernel interrupt, restart or crash does
not reach it; its output goes to the folder's worker.log. `Detached` is a kernel's view of a run
training in another process, also of one another kernel started: it has a Run's face (events,
subscribers, status, stop, pause, resume, wait) and is fed by reading the run's folder.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import RunConfig
from .errors import RunError
from .events import ACTIVE, INTERRUPTED, STATUS
from .runs import WORKER_LOG, RunStore, stored_config
from .training import Run

POLL_SECONDS = 0.5


def worker_command(config: RunConfig, folder: Path) -> list[str]:
    """The command that trains the run in `folder`: the worker alone, or under accelerate launch."""
    worker = ["-m", "lora_magic.worker", str(folder)]
    if config.launch == "process":
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(config.processes)]
    if config.accelerate_config:
        launch += ["--config_file", config.accelerate_config]
    else:  # data parallel on this machine: NCCL between GPUs, gloo between CPU processes
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--multi_gpu"] if config.processes > 1 else []
    return [*launch, *worker]


def launch(store: RunStore, name: str, config: RunConfig) -> Detached:
    """Start the worker of run `name` (its folder is complete) and follow it."""
    folder = store.path(name)
    with open(folder / WORKER_LOG, "ab") as log:
        process = subprocess.Popen(
            worker_command(config, folder),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the kernel's process group: its interrupts stay there
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    # until the worker writes its own, the run is alive as long as the launched process is
    store.update(name, pid=process.pid, launched=worker_command(config, folder))
    threading.Thread(target=process.wait, daemon=True).start()  # reaps it: no zombie looks alive
    return Detached(store, name)


class Detached(Run):
    """A run that trains in another process, followed through its folder in the run store."""

    stops_on_interrupt = False  # it lives beyond the kernel: an interrupt ends only the watching

    def __init__(self, store: RunStore, name: str):
        record = store.read(name)
        super().__init__(name, stored_config(record), store)
        self._offset = 0
        self._read(record)
        threading.Thread(target=self._follow, name=f"lora-follow-{name}", daemon=True).start()

    def _follow(self) -> None:
        while not self.done:
            time.sleep(POLL_SECONDS)
            self._read(self.store.read(self.name))

    def _read(self, record: dict) -> None:
        """Take in the events written since the last read, then the run's state. An ended run's
        record is read first, so the events that led to its end are all in before it counts as done."""
        events, self._offset = self.store.events(self.name, self._offset)
        for event in events:
            self.events.append(event)
            self._notify(event)
        self.status, self.step = record["status"], record.get("step", 0)
        self.total_steps = record.get("total_steps") or 0
        self.metrics, self.error = record.get("metrics") or {}, record.get("error")
        self.warning = record.get("warning")
        self.trainable_params = record.get("trainable_params") or 0
        self.total_params = record.get("total_params") or 0
        if self.status in ACTIVE:
            return
        if self.status == INTERRUPTED and not (self.events and self.events[-1].get("status") == INTERRUPTED):
            self.error = f"its worker process ended without recording an end; see {self.path / WORKER_LOG}"
            event = {"time": time.time(), "type": STATUS, "status": INTERRUPTED, "step": self.step}
            self.events.append(event)
            self._notify(event)
        self._done.set()

    # -- controlling, through the run's folder ----------------------------------------------------
    def stop(self) -> None:
        if not self.done:
            self.store.request_stop(self.name)

    def pause(self) -> None:
        if self.done:
            raise RunError(f"run {self.name!r} is {self.status}; only a running run can be paused")
        self.store.request_pause(self.name)

    def resume(self) -> None:
        self.store.request_pause(self.name, paused=False)

    def rollback(self) -> None:
        raise RunError(
            f"run {self.name!r} trains in another process, which holds its best weights; stop it and "
            "resume it in this kernel (lora_magic.resume) to roll back"
        )

    def wait(self, timeout: float | None = None) -> Detached:
        """Block until the run ends; Ctrl-C / a kernel interrupt ends the waiting, not the run."""
        with contextlib.suppress(KeyboardInterrupt):
            self._done.wait(timeout)
        return self
