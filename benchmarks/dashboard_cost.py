"""What the live dashboard costs training: steps/s of the same run with and without it.

    python benchmarks/dashboard_cost.py [--model DIR] [--steps 60] [--repeats 2]

Without --model a tiny random Llama with the built-in model's tokenizer is made in a temp folder.
Each repeat trains the same run three ways: unobserved (run.wait()), with the dashboard pumped in
the foreground, and with the dashboard fed from the worker thread (background). Steps/s are
measured between the first and the last log event, so model loading is left out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def steps_per_second(run) -> float:
    logs = [e for e in run.events if e["type"] == "log"]
    return (logs[-1]["step"] - logs[0]["step"]) / (logs[-1]["time"] - logs[0]["time"])


def measure(mode: str, model: str, steps: int, runs_dir: Path) -> tuple[float, float]:
    """(steps/s, seconds spent drawing the plot)."""
    run = lora_magic.train(
        model=model, data=records(), steps=steps, eval_every=steps // 4, eval_fraction=0.1, runs_dir=runs_dir
    )
    dashboard = None if mode == "none" else Dashboard(run)
    if mode == "none":
        run.wait()
    elif mode == "foreground":
        pump(run, dashboard)
    else:
        follow(run, dashboard)
        run.wait()
    assert run.status == "completed", run.error
    return steps_per_second(run), dashboard.throttle.spent if dashboard else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or name; default: a tiny random Llama")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        model = args.model or tiny_llama(Path(temp) / "tiny")
        results: dict[str, list[tuple[float, float]]] = {"none": [], "foreground": [], "background": []}
        for _ in range(args.repeats):
            for mode in results:  # interleaved, so drift in machine load hits every mode alike
                started = time.perf_counter()
                results[mode].append(measure(mode, model, args.steps, Path(temp) / "runs"))
                print(
                    f"{mode:>10}: {results[mode][-1][0]:.2f} steps/s ({time.perf_counter() - started:.0f} s)"
                )
    base = statistics.median(r[0] for r in results["none"])
    print(f"\nmodel {args.model or 'tiny random Llama'}, {args.steps} steps, median of {args.repeats}")
    print("| mode | steps/s | vs. no dashboard | plot drawing |")
    print("|---|---|---|---|")
    for mode, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        drawing = statistics.median(r[1] for r in rows)
        print(f"| {mode} | {rate:.2f} | {100 * (rate / base - 1):+.1f} % | {drawing:.2f} s |")


if __name__ == "__main__":
    main()
