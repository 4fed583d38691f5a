"""What the live dashboard costs training, and how far its loss chart is behind: steps/s of the same
run with and without it, and the seconds from each logged step to the chart update that carries it.

    python benchmarks/dashboard_cost.py [--model DIR] [--steps 60] [--repeats 2]

Without --model a tiny random Llama with the built-in model's tokenizer is made in a temp folder.
Each repeat trains the same run three ways: unobserved (run.wait()), with the dashboard pumped in
the foreground, and with the dashboard fed from the worker thread (background). Steps/s are
measured between the first and the last log event, so model loading is left out. The lag of a
step runs from its log event to the moment the chart's points holding it are sent to the browser;
the chart's share is the kernel's time spent on it (taking events, sending updates) over the
time between the first and the last step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import lora_magic
from lora_magic.model.tiny import tiny_llama
from lora_magic.widgets import Dashboard
from lora_magic.widgets.watch import follow, pump


def records(n: int = 64) -> list[dict[str, str]]:
    colours, things = ["red", "blue", "green", "amber"], ["lamp", "kettle", "chair", "bottle"]
    return [
        {
            "instruction": f"Describe the {colours[i % 4]} {things[i // 4 % 4]}.",
            "response": f"A fine {things[i // 4 % 4]}.",
        }
        for i in range(n)
    ]


def training_seconds(run) -> float:
    logs = [e for e in run.events if e["type"] == "log"]
    return logs[-1]["time"] - logs[0]["time"]


def steps_per_second(run) -> float:
    logs = [e for e in run.events if e["type"] == "log"]
    return (logs[-1]["step"] - logs[0]["step"]) / training_seconds(run)


class Measured(NamedTuple):
    steps_per_second: float
    lags: list[float]  # seconds from each log event to the chart update that holds its step
    updates: int  # chart updates sent
    chart_share: float  # the kernel's time in the chart (taking events, sending updates) / training time


def lags(run, sent: list[tuple[float, float]]) -> list[float]:
    return [
        next(when for when, step in sent if step >= event["step"]) - event["time"]
        for event in run.events
        if event["type"] == "log"
    ]


def timed(chart, names: tuple[str, ...] = ("add", "flush", "_when_due")) -> list[float]:
    """Wraps the chart's methods that do its work; the list gets the seconds of each call."""
    spent: list[float] = []

    def wrap(method):
        def timed_call(*args):
            started = time.perf_counter()
            method(*args)
            spent.append(time.perf_counter() - started)

        return timed_call

    for name in names:
        setattr(chart, name, wrap(getattr(chart, name)))
    return spent


def measure(mode: str, model: str, steps: int, runs_dir: Path) -> Measured:
    run = lora_magic.train(
        model=model, data=records(), steps=steps, eval_every=steps // 4, eval_fraction=0.1, runs_dir=runs_dir
    )
    if mode == "none":
        run.wait()
        return Measured(steps_per_second(run), [], 0, 0.0)
    dashboard = Dashboard(run)
    sent: list[tuple[float, float]] = []  # (when, the last step it carried)
    dashboard.chart.observe(lambda change: sent.append((time.time(), change["new"][-1][0])), names=["train"])
    spent = timed(dashboard.chart)
    if mode == "foreground":
        pump(run, dashboard)
    else:
        follow(run, dashboard)
        run.wait()
        time.sleep(0.1)  # the worker's thread may still be feeding the final events
    assert run.status == "completed", run.error
    return Measured(steps_per_second(run), lags(run, sent), len(sent), sum(spent) / training_seconds(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or name; default: a tiny random Llama")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        model = args.model or tiny_llama(Path(temp) / "tiny")
        results: dict[str, list[Measured]] = {"none": [], "foreground": [], "background": []}
        for _ in range(args.repeats):
            for mode in results:  # interleaved, so drift in machine load hits every mode alike
                started = time.perf_counter()
                results[mode].append(measure(mode, model, args.steps, Path(temp) / "runs"))
                rate = results[mode][-1].steps_per_second
                print(f"{mode:>10}: {rate:.2f} steps/s ({time.perf_counter() - started:.0f} s)")
    base = statistics.median(r.steps_per_second for r in results["none"])
    print(f"\nmodel {args.model or 'tiny random Llama'}, {args.steps} steps, median of {args.repeats}")
    print(
        "| mode | steps/s | vs. no dashboard | chart updates | chart's share of the time | lag of a step: median | max |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        rate = statistics.median(r.steps_per_second for r in rows)
        updates = statistics.median(r.updates for r in rows)
        chart = statistics.median(r.chart_share for r in rows)
        lag = [seconds for r in rows for seconds in r.lags]
        behind = f"{statistics.median(lag):.2f} s | {max(lag):.2f} s" if lag else "– | –"
        print(
            f"| {mode} | {rate:.2f} | {100 * (rate / base - 1):+.1f} % | {updates:.0f} | {100 * chart:.2f} % | {behind} |"
        )


if __name__ == "__main__":
    main()
