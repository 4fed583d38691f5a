"""How close a plan's memory estimate comes to the measured peak of real training steps.

    .venv/bin/python benchmarks/plan_accuracy.py [--model smollm2-135m] [--device cpu] [--rows 1,4,11]

Each row is `lm.plan(..., measure=True)` in a fresh Python process (so no earlier row's memory
is reused): four real steps of batch_size × max_length tokens through the trainer. On a GPU the
measured peak is torch's peak allocation; on a CPU the loaded weights plus the rise of the
process's resident memory during the steps. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = [
    {"quantization": "none", "batch_size": 1, "max_length": 128},
    {"quantization": "8bit", "batch_size": 1, "max_length": 128},
    {"quantization": "4bit", "batch_size": 1, "max_length": 128},
    {"quantization": "none", "batch_size": 2, "max_length": 256},
    {"quantization": "4bit", "batch_size": 2, "max_length": 256},
    {"quantization": "none", "batch_size": 2, "max_length": 256, "targets": "all-linear"},
    {"quantization": "none", "batch_size": 2, "max_length": 256, "gradient_checkpointing": "on"},
    {"quantization": "none", "batch_size": 4, "max_length": 256, "targets": "all-linear"},
    {
        "quantization": "none",
        "batch_size": 4,
        "max_length": 256,
        "targets": "all-linear",
        "gradient_checkpointing": "on",
    },
    {"quantization": "none", "batch_size": 4, "max_length": 512},
    {"quantization": "none", "batch_size": 2, "max_length": 256, "dora": True},
    {"quantization": "none", "batch_size": 2, "max_length": 256, "rslora": True},
    {"quantization": "none", "batch_size": 2, "max_length": 256, "targets": "all-linear", "dora": True},
]
SCRIPT = """
import json, sys
import lora_magic as lm
plan = lm.plan(**json.loads(sys.argv[1]), measure=True)
print(json.dumps({"estimate": plan.comparable_bytes, "measured": plan.measured.peak_bytes,
                  "seconds": plan.measured.seconds_per_step, "error": plan.measured.error}))
"""


def measure(settings: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(settings)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rows", help=f"some of the rows, by number from 1 to {len(CASES)}; default: all")
    args = parser.parse_args()
    numbers = [int(n) for n in args.rows.split(",")] if args.rows else range(1, len(CASES) + 1)
    if unknown := [n for n in numbers if not 1 <= n <= len(CASES)]:
        parser.error(f"no rows {unknown}; the rows are 1 to {len(CASES)}")
    print("| setting | estimate GiB | measured GiB | estimate / measured | s/step |")
    print("| --- | --- | --- | --- | --- |")
    for case in (CASES[n - 1] for n in numbers):
        row = measure({"model": args.model, "device": args.device, **case})
        label = ", ".join(f"{key} {value}" for key, value in case.items())
        if row["error"]:
            print(f"| {label} | {row['estimate'] / 2**30:.2f} | failed: {row['error']} | | |")
            continue
        ratio = row["estimate"] / row["measured"]
        print(
            f"| {label} | {row['estimate'] / 2**30:.2f} | {row['measured'] / 2**30:.2f} | {ratio:.2f} "
            f"| {row['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
