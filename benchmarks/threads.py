"""Seconds per training step of the built-in model when one or two processes train at once, with one
or two compute threads each: why the test suite's two workers compute on one thread each.

    .venv/bin/python benchmarks/threads.py [--steps 6]

Each case starts fresh processes that load the model, take one step to warm up, then time `--steps`
steps (batch 4 × 85 tokens, LoRA on every linear layer, float32).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEP = """
import sys, time
from lora_magic.core.config import RunConfig
from lora_magic.model.session import session
from lora_magic.model.targets import resolve_targets

config = RunConfig(model="smollm2-135m", targets="all-linear")
session().ensure_base(config)
session().add_training_adapter("timed", config, resolve_targets(config, session().base_model))
model, tokenizer = session().model, session().tokenizer
model.train()
text = "Create a detailed description for the following product: Zenith Desk Lamp " * 6
batch = tokenizer([text] * 4, return_tensors="pt")
model(**batch, labels=batch["input_ids"]).loss.backward()
started = time.perf_counter()
for _ in range(int(sys.argv[1])):
    model(**batch, labels=batch["input_ids"]).loss.backward()
print((time.perf_counter() - started) / int(sys.argv[1]))
"""
CASES = {
    "one process, 2 threads": (1, {}),
    "one process, 1 thread": (1, {"OMP_NUM_THREADS": "1"}),
    "two processes at once, 2 threads each": (2, {}),
    "two processes at once, 2 threads each, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "two processes at once, 1 thread each": (2, {"OMP_NUM_THREADS": "1"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print("| case | seconds per step (each process) |\n| --- | --- |")
    for case, (processes, env) in CASES.items():
        started = [
            subprocess.Popen(
                [sys.executable, "-c", STEP, str(args.steps)],
                env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(processes)
        ]
        seconds = [float(process.communicate()[0].split()[-1]) for process in started]
        print(f"| {case} | {' and '.join(f'{s:.2f}' for s in seconds)} |", flush=True)


if __name__ == "__main__":
    main()
