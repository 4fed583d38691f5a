"""How fast float32, 8-bit and 4-bit bases of the built-in model learn the bundled products.

    .venv/bin/python benchmarks/quantization.py [--bases none,8bit,4bit] [--lrs 2e-4,1e-3]
        [--seeds 42] [--steps 40] [--answers] [--evaluate]

Each run is the real-model tests' setting: 40 steps, all-linear targets, r=8, batch 4, on the
first 120 bundled rows, evaluated on rows 120-127 before and after. `--answers` also answers three
held-out products greedily and counts the answers that end with the template's terminator;
`--evaluate` scores base and tuned model on the 8 eval rows with `lm.evaluate` (token-F1, ROUGE-L,
answers ending with the terminator, as "base → tuned"). The
runs are the same whatever the machine's load; the seconds are not. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import lora_magic as lm
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.data.templates import ALPACA_END

HELD_OUT = [  # products and categories the bundled training rows do not contain
    "Create a detailed description for the following product: Zenith Desk Lamp, belonging to category: Lighting",
    "Create a detailed description for the following product: Polar Kettle, belonging to category: Kitchen Appliance",
    "Create a detailed description for the following product: Orbit Backpack, belonging to category: Travel",
]


def train_once(
    base: str, lr: float, seed: int, steps: int, answers: bool, evaluate: bool, runs_dir: str
) -> str:
    records = load_records(str(bundled_dataset()))
    started = time.time()
    run = lm.train(
        model="smollm2-135m",
        quantization=base,
        data=records[:120],
        eval_data=records[120:128],
        steps=steps,
        learning_rate=lr,
        seed=seed,
        targets="all-linear",
        eval_every=steps,
        runs_dir=runs_dir,
    ).wait()
    first, last = run.eval_losses[0][1], run.eval_losses[-1][1]
    ended = "–"
    if answers:
        replies = [lm.compare(p, adapters=[run.name], max_new_tokens=60)[run.name] for p in HELD_OUT]
        ended = f"{sum(r.rstrip().endswith(ALPACA_END) for r in replies)}/{len(replies)}"
    scores = "– | – | –"
    if evaluate:
        metrics = lm.evaluate(run.name, runs_dir=runs_dir).metrics
        scores = " | ".join(
            f"{metrics['base'][key]:.2f} → {metrics[run.name][key]:.2f}"
            for key in ("token_f1", "rouge_l", "terminated")
        )
    lm.free()
    return (
        f"| {base} | {lr:g} | {seed} | {first:.3f} → {last:.3f} | {last / first:.2f} | {ended} "
        f"| {scores} | {time.time() - started:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bases", default="none,8bit,4bit")
    parser.add_argument("--lrs", default="2e-4,1e-3")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--answers", action="store_true", help="count terminated held-out answers")
    parser.add_argument("--evaluate", action="store_true", help="score base and tuned model on the eval rows")
    args = parser.parse_args()
    print(
        "| base | learning rate | seed | eval loss before → after | after / before | answers ending "
        "'### End' | token-F1 | ROUGE-L | terminated | seconds |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        flush=True,
    )
    grid = itertools.product(
        args.bases.split(","), map(float, args.lrs.split(",")), map(int, args.seeds.split(","))
    )
    with tempfile.TemporaryDirectory() as runs_dir:
        for base, lr, seed in grid:
            row = train_once(base, lr, seed, args.steps, args.answers, args.evaluate, runs_dir)
            print(row, flush=True)


if __name__ == "__main__":
    main()
