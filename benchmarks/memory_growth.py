"""How a kernel's resident memory changes over the runs of a sweep, in one process.

    .venv/bin/python benchmarks/memory_growth.py [--runs 10] [--steps 2] [--model smollm2-135m]

A sweep over `seed` trains `--runs` runs of the bundled products one after another on the loaded
base (all linear layers, batch 4, no evaluation), as `%%finetune` with a `sweep:` block does. The
table gives the process's resident memory (RSS, from /proc) after the base is loaded and after each
run, and the growth from the first run's end to the last's (the first run also allocates what
every run reuses). Each finished adapter stays loaded, as a sweep's adapters do for comparing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lora_magic as lm


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    rows = lm.load_records(lm.bundled_dataset())[:60]
    with tempfile.TemporaryDirectory() as runs_dir:
        lm.session().ensure_base(lm.RunConfig(model=args.model))
        readings = [("base loaded", rss_mb())]
        sweep = lm.sweep(
            model=args.model,
            data=rows,
            steps=args.steps,
            targets="all-linear",
            eval_fraction=0,
            name="growth",
            grid={"seed": list(range(args.runs))},
            runs_dir=runs_dir,
        )
        run = None
        while (run := sweep.next_run(run)) is not None:
            run.wait()
            readings.append((run.name, rss_mb()))
        sweep.wait()
    print("| after | RSS (MB) |\n| --- | --- |")
    for label, value in readings:
        print(f"| {label} | {value:,.0f} |")
    print(f"\ngrowth over runs 2 to {args.runs}: {readings[-1][1] - readings[1][1]:,.0f} MB")


if __name__ == "__main__":
    main()
