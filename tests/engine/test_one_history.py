"""A run resumed from its checkpoint keeps one history wherever it is read: followed from another
process (`%lora watch`, launch 'process'), drawn in that run's dashboard, and behind the next run of
a sweep. The steps after the checkpoint were trained again: what was logged of them before the
resume is superseded, so each step shows once, with its loss from the resumed training."""

from __future__ import annotations

from lora_magic.core.config import RunConfig
from lora_magic.core.events import COMPLETED, RUNNING
from lora_magic.core.store import RunStore
from lora_magic.experiments.sweep import Sweep, grid_points
from lora_magic.training.run import follow
from lora_magic.widgets import Dashboard
from lora_magic.widgets.watch import follow as feed

FIRST = [{"type": "log", "step": step, "loss": 10.0 - step, "total_steps": 6} for step in (1, 2, 3, 4)]
RESUMED = [
    {"type": "status", "status": RUNNING, "step": 2, "resumed_from": 2},
    *({"type": "log", "step": step, "loss": 5.0 - step / 10, "total_steps": 6} for step in (3, 4, 5, 6)),
]
ONE_CURVE = [(1, 9.0), (2, 8.0), (3, 4.7), (4, 4.6), (5, 4.5), (6, 4.4)]


def start(store: RunStore, name: str, config: RunConfig) -> None:
    """A run folder as a worker process writes it, up to the steps logged before its resume."""
    store.create(name, {"name": name, "status": RUNNING, "config": config.to_dict()})
    for event in FIRST:
        store.append_event(name, event)


def resume_and_finish(store: RunStore, name: str) -> None:
    for event in RESUMED:
        store.append_event(name, event)
    store.append_event(name, {"type": "status", "status": COMPLETED, "step": 6})
    store.update(name, status=COMPLETED, step=6, total_steps=6)


def test_a_resumed_run_followed_from_another_process_shows_one_curve(runs_dir):
    store = RunStore(runs_dir)
    start(store, "resumed", RunConfig())
    run = follow(store, "resumed")  # followed while it trains, as %lora watch does
    dashboard = Dashboard(run)
    feed(run, dashboard)
    resume_and_finish(store, "resumed")
    run.wait(timeout=30)

    assert run.done and run.status == COMPLETED
    assert run.losses == ONE_CURVE
    assert dashboard.chart.train == [[step, loss] for step, loss in ONE_CURVE]


def test_a_sweeps_reference_curves_leave_out_superseded_steps(runs_dir):
    store = RunStore(runs_dir)
    config = RunConfig(steps=6)
    points = grid_points("swept", config, {"r": [4, 8]})
    start(store, points[0].name, points[0].config)
    resume_and_finish(store, points[0].name)
    sweep = Sweep("swept", {"r": [4, 8]}, points, store)

    assert sweep.finished_losses() == [(points[0].name, ONE_CURVE)]
