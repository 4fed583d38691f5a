"""The training dashboard on a real run of the tiny model: events → widgets, buttons → engine."""

from __future__ import annotations

import _thread
import itertools
import re
import signal
import threading
import time

import pytest

import lora_magic
from lora_magic.widgets import Dashboard, watch
from lora_magic.widgets.watch import follow, pump

PROBE = "Describe the red lamp."


@pytest.fixture
def start(tiny_model_dir, records, runs_dir):
    def start(steps: int = 4, **settings):
        settings = {"eval_every": steps, "probe_tokens": 4, **settings}
        return lora_magic.train(
            model=tiny_model_dir, data=records, steps=steps, runs_dir=runs_dir, **settings
        )

    return start


def first_log(run) -> threading.Event:
    seen = threading.Event()
    run.subscribe(lambda event: event["type"] == "log" and seen.set())
    return seen


def test_foreground_dashboard_shows_the_whole_run(start):
    run = start(steps=4, probes=[PROBE])
    dashboard = Dashboard(run)
    pump(run, dashboard)
    assert run.status == "completed"
    assert (dashboard.progress.value, dashboard.progress.max) == (4, 4)
    assert dashboard.progress.bar_style == "success"
    assert "step 4/4" in dashboard.stats.value and "tokens/s" in dashboard.stats.value
    assert "eval loss" in dashboard.stats.value
    assert run.name in dashboard.header.value and "trainable" in dashboard.header.value
    assert f"{run.trainable_params:,}" in dashboard.header.value
    assert dashboard.chart.train == [[step, loss] for step, loss in run.losses]
    assert dashboard.chart.evals == [[step, loss] for step, loss in run.eval_losses]
    assert PROBE in dashboard.probes.value and "step 4" in dashboard.probes.value
    assert str(run.adapter_path) in dashboard.summary.value
    assert dashboard.stop_button.disabled and dashboard.pause_button.disabled


def test_foreground_pumping_ends_with_the_run_not_a_poll_later(start):
    run = start(steps=2)
    dashboard = Dashboard(run)
    pumping = threading.Thread(target=pump, args=(run, dashboard), kwargs={"poll": 3600}, daemon=True)
    pumping.start()
    pumping.join(120)  # polling once more after the last event would hold it for an hour
    assert not pumping.is_alive() and run.status == "completed"
    assert dashboard.progress.bar_style == "success"


def test_stop_button_stops_the_run_and_the_adapter_is_saved(start):
    run = start(steps=40)
    dashboard = Dashboard(run)
    follow(run, dashboard)  # background: fed by the worker thread
    assert first_log(run).wait(60)
    dashboard.stop_button.click()
    assert dashboard.stop_button.disabled and "stopping" in dashboard.stats.value
    run.wait(60)
    assert run.status == "stopped" and run.step < 40
    assert run.adapter_path is not None
    assert dashboard.progress.bar_style == "warning"
    assert "stopped" in dashboard.summary.value and str(run.adapter_path) in dashboard.summary.value
    assert "lora_magic.resume" in dashboard.summary.value
    assert "ETA" not in dashboard.stats.value  # no countdown left on a finished run


def test_pause_button_holds_training_until_resume(start):
    run = start(steps=6)
    dashboard = Dashboard(run)
    follow(run, dashboard)
    paused = threading.Event()
    run.subscribe(lambda event: event.get("status") == "paused" and paused.set())
    assert first_log(run).wait(60)
    dashboard.pause_button.click()
    assert dashboard.pause_button.description == "Resume"
    assert paused.wait(30)
    held = run.step
    assert not run.wait(1.5).done and run.step == held
    assert "paused" in dashboard.stats.value
    dashboard.pause_button.click()
    run.wait(60)
    assert run.status == "completed" and dashboard.pause_button.description == "Pause"


def test_kernel_interrupt_in_the_foreground_is_a_graceful_stop(start):
    # a kernel turns SIGINT into KeyboardInterrupt, also when the tests run as a background job,
    # which starts with SIGINT ignored (and then interrupt_main would do nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt_while_watching(start)
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_while_watching(start) -> None:
    run = start(steps=40)
    interrupted = []

    def interrupt_once(event):  # what a kernel interrupt does: KeyboardInterrupt in the main thread
        if event["type"] == "log" and not interrupted:
            interrupted.append(event["step"])
            _thread.interrupt_main()

    run.subscribe(interrupt_once)
    dashboard = watch(run, widgets=True)
    assert interrupted and run.status == "stopped" and run.step < 40
    assert run.adapter_path is not None
    assert "stopped" in dashboard.summary.value


def test_the_chart_follows_each_step_and_is_sent_twice_a_second_at_most(start):
    run = start(steps=30)
    dashboard = Dashboard(run)
    sent: list[tuple[float, int]] = []  # (when, the last step it carried)
    dashboard.chart.observe(lambda change: sent.append((time.time(), change["new"][-1][0])), names=["train"])
    heard: dict[int, float] = {}  # step -> when the dashboard's chart was given it
    add = dashboard.chart.add

    def add_and_note(event: dict) -> None:
        if event["type"] == "log":
            heard.setdefault(event["step"], time.time())
        add(event)

    dashboard.chart.add = add_and_note
    pump(run, dashboard)
    assert dashboard.chart.train == [[step, loss] for step, loss in run.losses]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(sent[:-1])]
    assert all(gap >= dashboard.chart.interval - 0.01 for gap in gaps)  # the last one is not held back
    # timed from the chart's side (the test's pump is not the product): a held-back step waits out the
    # interval, and its timer thread may wait a while more for a core on a machine busy training
    for step, when in heard.items():
        arrived = next(at for at, last in sent if last >= step)
        assert arrived - when < dashboard.chart.interval + 1.0, (
            f"step {step} was sent {arrived - when:.2f} s late"
        )
    assert sorted(heard) == [step for step, _ in run.losses]


def test_background_watch_returns_at_once_and_keeps_updating(start):
    run = start(steps=4)
    dashboard = watch(run, background=True, widgets=True)
    assert not run.done
    run.wait(60)
    assert dashboard.progress.value == 4 and dashboard.progress.bar_style == "success"
    assert len(dashboard.chart.train) == 4


def test_watching_a_finished_run_replays_its_events(start):
    run = start(steps=3)
    run.wait(60)
    dashboard = watch(run, widgets=True)
    assert dashboard.progress.value == 3 and "completed" in dashboard.summary.value
    assert dashboard.chart.train == [[step, loss] for step, loss in run.losses]


def test_text_progress_without_a_widget_frontend(start, capsys):
    run = start(steps=4, probes=[PROBE])
    assert watch(run, widgets=False) is None
    out = capsys.readouterr().out
    assert f"[{run.name}] " in out
    assert "trainable" in out and "step 4/4 · loss" in out
    assert f"probe at step 0: {PROBE!r}" in out
    assert f"Adapter saved to {run.adapter_path}" in out
    # the final plot, as a line of text outside a notebook frontend
    assert re.search(rf"\[{run.name}\] loss curve: [\d.]+ at step 1 → [\d.]+ at step 4\n", out)


def test_a_failed_run_shows_its_error(runs_dir):
    from lora_magic.training.run import Run

    store = lora_magic.RunStore(runs_dir)
    store.create("broken", {"name": "broken", "status": "running"})
    run = Run("broken", lora_magic.RunConfig(), store)
    dashboard = Dashboard(run)
    error = "out of memory at step 3: lower batch_size or max_length, or use quantization='4bit'"
    run.receive({"type": "status", "status": "failed", "step": 0, "error": error})  # as the trainer does
    dashboard.handle(run.events[-1])
    assert dashboard.progress.bar_style == "danger"
    assert "failed at step 0: out of memory" in dashboard.summary.value
    assert dashboard.stop_button.disabled
