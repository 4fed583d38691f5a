"""Sweeps: the runs of a grid of settings, one at a time, and a table to choose between them.

`sweep(grid={"r": [8, 16], "targets": ["attention", "all-linear"]}, data=df, steps=40)` runs every
combination through the training manager, in an order that keeps the loaded base while the model
and its quantisation stay the same. Each run is named after the sweep and its settings
(`mysweep-r_8-targets_attention`), so running the same sweep again skips the runs it completed and
trains again only those that are missing or did not complete. Stopping a run stops the sweep.
The table is read from the run store, so it also describes a sweep of an earlier kernel.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import results
from ..core.config import BASE_SETTINGS, RunConfig, changed_settings, check_names, coerce
from ..core.errors import ConfigError
from ..core.events import COMPLETED, FINISHED, LOG, PROBE, RUNNING, STOPPED, Curve
from ..core.store import RunStore
from ..data.sources import fingerprint, load_records
from ..model.session import session
from ..training.run import Run, wait_or_stop
from ..training.start import train
from ..training.trainer import manager

MAX_RUNS = 1000  # in one sweep: a grid is planned and validated whole before its first run


@dataclass
class Point:
    """One run of a sweep: its name, the settings the grid chose, and its whole configuration."""

    name: str
    knobs: dict[str, Any]
    config: RunConfig


class Sweep:
    """A sweep in this kernel: its runs one after another in a background thread."""

    def __init__(self, name: str, grid: dict[str, list], points: list[Point], store: RunStore):
        self.name, self.grid, self.points, self.store = name, grid, points, store
        self.skipped = [p.name for p in points if _completed(store, p)]
        self.current: Run | None = None  # the run training now
        self.status = RUNNING
        self._stop = threading.Event()
        self._started = threading.Condition()  # notified when a run starts and when the sweep ends
        self._done = threading.Event()

    # -- controlling ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the run training now (its adapter is saved) and start no other."""
        self._stop.set()
        if self.current is not None:
            self.current.stop()

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until the sweep ends. Ctrl-C / kernel interrupt stops it gracefully instead."""
        wait_or_stop(self._done, self.stop, timeout)
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def next_run(self, after: Run | None = None, timeout: float | None = None) -> Run | None:
        """The run started after `after` (None: the first), or None once the sweep has ended."""
        with self._started:
            self._started.wait_for(lambda: self.current is not after or self.done, timeout)
            return None if self.current is after else self.current

    # -- results -------------------------------------------------------------------------------
    def knobs(self, name: str) -> dict[str, Any]:
        """The settings the grid chose for run `name`."""
        return next(p.knobs for p in self.points if p.name == name)

    def finished_losses(self) -> list[tuple[str, Curve]]:
        """(run, train losses by step) of each run of the sweep that has ended."""
        return [
            (point.name, results.history(self.store, point.name).curve(LOG))
            for point in self.points
            if self.store.exists(point.name) and self.store.read(point.name)["status"] in FINISHED
        ]

    def table(self) -> Any:
        """A DataFrame, a row per run of the grid (see `table`)."""
        return table(self.store, [p.name for p in self.points], list(self.grid))

    def to_csv(self, path: str | Path) -> Path:
        self.table().to_csv(path)
        return Path(path)

    def __repr__(self) -> str:
        finished = sum(_completed(self.store, p) for p in self.points)
        return f"<Sweep {self.name!r}: {self.status}, {finished}/{len(self.points)} runs completed, {self.store.root}>"

    def _repr_html_(self) -> str:
        table = self.table().to_html(na_rep="", float_format=lambda x: f"{x:.4g}")
        return f"<p>{html.escape(repr(self)[1:-1])}</p>{table}"

    # -- the worker ----------------------------------------------------------------------------
    def work(self, runs_dir: str | Path | None) -> None:
        """Train the sweep's runs one after another (the body of its thread)."""
        try:
            for point in self.points:
                if self._stop.is_set():
                    break
                if _completed(self.store, point):
                    continue
                if self.store.exists(point.name):  # stopped, failed or interrupted: train it again
                    if point.name in session().adapters:
                        session().delete_adapter(point.name)
                    self.store.remove(point.name)
                run = train(point.config, runs_dir=runs_dir, sweep={"name": self.name, "knobs": point.knobs})
                with self._started:
                    self.current = run
                    self._started.notify_all()
                if self._stop.is_set():  # stopped while this run was being set up
                    run.stop()
                run.wait()
                if run.status == STOPPED:  # a Stop button, %lora stop or an interrupt: the sweep ends
                    self._stop.set()
            self.status = STOPPED if self._stop.is_set() else COMPLETED
        except Exception as error:
            self.status = f"failed: {error}"
            raise
        finally:
            with self._started:
                self._done.set()
                self._started.notify_all()


def sweep(
    config: RunConfig | None = None,
    /,
    *,
    grid: dict[str, list],
    runs_dir: str | Path | None = None,
    **settings: Any,
) -> Sweep:
    """Start the runs of `grid` (settings -> lists of values) over `config` and `settings`, one at a
    time in the background; returns the Sweep (`.wait()`, `.stop()`, `.table()`).

    `name` names the sweep (default: from its settings, data and grid, so the same sweep run again
    finds its runs). Runs already completed with the same settings are skipped."""
    config = (config or RunConfig()).replace(**settings)
    grid = check_grid(grid)
    name = config.name or default_name(config, grid)
    store = RunStore(runs_dir)
    points = grid_points(name, config, grid)
    for point in points:
        _check_unchanged(store, point)
    manager().ensure_idle()
    swept = Sweep(name, grid, points, store)
    thread = threading.Thread(target=swept.work, args=(runs_dir,), name=f"lora-sweep-{name}", daemon=True)
    thread.start()
    return swept


def check_grid(grid: Any) -> dict[str, list]:
    """The grid with each value a list of its setting's type; a clear error for anything else."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("a sweep needs settings with lists of values, e.g. sweep: {r: [8, 16]}")
    check_names(grid)
    for key in ("name", "data", "eval_data"):
        if key in grid:
            raise ConfigError(
                f"{key} cannot be swept: a sweep names its own runs and trains them on the same data"
            )
    checked = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep {key}={values!r} is not valid; give a list of values, e.g. {key}: [a, b]"
            )
        checked[key] = [coerce(key, value) for value in values]
        twice = next((value for i, value in enumerate(checked[key]) if value in checked[key][:i]), None)
        if twice is not None:
            raise ConfigError(f"sweep {key} lists {twice!r} twice; give each value once")
    count = math.prod(len(values) for values in checked.values())
    if count > MAX_RUNS:
        sizes = " × ".join(f"{len(values)} {key}" for key, values in checked.items())
        raise ConfigError(
            f"the sweep has {count:,} runs ({sizes}); one sweep trains at most {MAX_RUNS:,}: sweep fewer values"
        )
    return checked


def grid_points(name: str, config: RunConfig, grid: dict[str, list]) -> list[Point]:
    """Every combination as a Point, validated now; base settings vary slowest."""
    keys = sorted(grid, key=lambda k: (k not in BASE_SETTINGS, list(grid).index(k)))
    points: list[Point] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        knobs = dict(zip(keys, values))
        run_name = "-".join([name, *(f"{k}_{_slug(v)}" for k, v in knobs.items())])
        if len(run_name) > 100 or any(p.name == run_name for p in points):  # too long, or slugs that meet
            digest = hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:8]
            run_name = f"{run_name[:91]}-{digest}"
        points.append(Point(run_name, knobs, config.replace(name=run_name, **knobs)))
    return points


def default_name(config: RunConfig, grid: dict[str, list]) -> str:
    """'sweep-' and a digest of the settings, the grid and the data's records."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("data", "eval_data")}
    data = [fingerprint(load_records(s)) if s is not None else None for s in (config.data, config.eval_data)]
    digest = hashlib.sha256(json.dumps([settings, grid, data], sort_keys=True, default=str).encode())
    return f"sweep-{digest.hexdigest()[:8]}"


def _slug(value: Any) -> str:
    text = ",".join(value) if isinstance(value, list) else "none" if value is None else str(value)
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"


def _completed(store: RunStore, point: Point) -> bool:
    return store.exists(point.name) and store.read(point.name)["status"] == COMPLETED


def _check_unchanged(store: RunStore, point: Point) -> None:
    """A completed run of this name must have been trained with these settings to be skipped."""
    if not _completed(store, point):
        return
    changed = changed_settings(store.read(point.name).get("config", {}), point.config)
    if changed:
        raise ConfigError(
            f"run {point.name!r} of this sweep was completed with other settings ({'; '.join(changed)}); "
            "give the sweep a new name, or remove the old runs"
        )


# -- the table --------------------------------------------------------------------------------------
def table(store: RunStore, names: list[str], knobs: list[str]) -> Any:
    """A row per run: the swept settings, the examples trained, trainable parameters, wall time,
    training tokens/s, peak memory, first and final train and eval loss, the held-out scores and
    the last probe answers. Runs not trained yet have only their settings."""
    import pandas as pd

    rows = []
    for name in names:
        if not store.exists(name):
            rows.append({"name": name, "status": "not started"})
            continue
        rows.append({"name": name, **_measurements(store, name)})
    frame = pd.DataFrame(rows).set_index("name").dropna(axis=1, how="all")  # e.g. no run evaluated
    for key in reversed(knobs):  # the swept settings first, as the grid gave them
        values = [_knob(store, n, key) for n in frame.index]
        frame.insert(0, key, pd.Series(values, index=frame.index, dtype=object))  # None stays None
    return frame


def _knob(store: RunStore, name: str, key: str) -> Any:
    if not store.exists(name):
        return None
    value = store.read(name).get("config", {}).get(key)
    return ",".join(value) if isinstance(value, list) else value


def _measurements(store: RunStore, name: str) -> dict[str, Any]:
    row = results.measurements(store, name)
    for event in results.history(store, name).of(PROBE):  # the last answer to each probe
        row[f"probe: {event['prompt']}"] = event["adapter"]
    return row
