"""What evaluation during training costs a default run of the built-in model.

    .venv/bin/python benchmarks/evaluation_cost.py [--rounds 2] [--steps 20] [--batch-size 8]
        [--train 60] [--eval 100] [--cases default,none,every-row]

A run of `--steps` steps at `--batch-size` on the first `--train` bundled product descriptions, with
the next `--eval` rows as its eval set (float32, LoRA r=8 on q/v, the defaults otherwise). Cases,
each in a fresh process with the model loaded before the clock starts:

- `default`: the default schedule (eval_every 0, eval_rows 32);
- `none`: no eval set at all;
- `every-row`: every eval row at the start and about ten times more (eval_rows 0, eval_every
  steps // 10): the schedule before eval_rows existed.

Reports the medians over `--rounds` rounds (cases alternating) of the run's wall time, the time
inside the trainer's evaluations, their count, and the evaluations' share of the run's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ONE = r"""
import json, sys, tempfile, time
from transformers import Trainer
import lora_magic as lm
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.model.session import session

case, settings = sys.argv[1], json.loads(sys.argv[2])
rows = load_records(str(bundled_dataset()))
train, held_out = rows[: settings["train"]], rows[settings["train"] : settings["train"] + settings["eval"]]
extra = {
    "default": {"eval_data": held_out},
    "none": {"eval_fraction": 0.0},
    "every-row": {"eval_data": held_out, "eval_rows": 0, "eval_every": max(1, settings["steps"] // 10)},
}[case]
config = lm.RunConfig(data=train, steps=settings["steps"], batch_size=settings["batch_size"], **extra)
spent = {"seconds": 0.0, "count": 0}
evaluate = Trainer.evaluate

def timed(self, *args, **kwargs):
    started = time.perf_counter()
    try:
        return evaluate(self, *args, **kwargs)
    finally:
        spent["seconds"] += time.perf_counter() - started
        spent["count"] += 1

Trainer.evaluate = timed
session().ensure_base(config)
with tempfile.TemporaryDirectory() as runs:
    started = time.perf_counter()
    run = lm.train(config, runs_dir=runs).wait()
    seconds = time.perf_counter() - started
assert run.status == "completed", run.error
print("RESULT " + json.dumps({"seconds": seconds, "eval_seconds": spent["seconds"], "evaluations": spent["count"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--cases", default="default,none,every-row")
    args = parser.parse_args()
    settings = {"steps": args.steps, "batch_size": args.batch_size, "train": args.train, "eval": args.eval}
    cases = args.cases.split(",")
    results: dict[str, list[dict]] = {case: [] for case in cases}
    for round_ in range(args.rounds):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            done = subprocess.run(
                [sys.executable, "-c", ONE, case, json.dumps(settings)], capture_output=True, text=True
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                sys.exit(f"{case} failed:\n{done.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT ") :])
            results[case].append(result)
            print(f"round {round_ + 1} {case:>10}: {json.dumps(result)}", flush=True)

    def median(case: str, key: str) -> float:
        return statistics.median(r[key] for r in results[case])

    print(f"\n{args.steps} steps of {args.batch_size}, {args.eval} eval rows; medians of {args.rounds}")
    print("| case | seconds | evaluations | seconds evaluating | share of the run |")
    print("| --- | --- | --- | --- | --- |")
    for case in cases:
        seconds, evaluating = median(case, "seconds"), median(case, "eval_seconds")
        print(
            f"| {case} | {seconds:.1f} | {median(case, 'evaluations'):.0f} | {evaluating:.1f} "
            f"| {evaluating / seconds:.1%} |"
        )


if __name__ == "__main__":
    main()
