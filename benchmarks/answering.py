"""Answering many prompts with the built-in model: what a user waits for in each way of asking.

    .venv/bin/python benchmarks/answering.py [--cases compare,evaluate,many,probes] [--one-by-one]
        [--tokens 96] [--runs-dir /tmp/answering-runs]

Four runs of a sweep (10 steps each on 60 bundled products, LoRA r=8 on q/v, float32 on the CPU,
learning rates 1e-3, 5e-4, 2e-4, 1e-4) are trained once into `--runs-dir` and reused. Cases, timed
in this one process after a warm-up answer:

- `compare`: one held-out prompt on the base and 3 of the adapters (`lm.compare`), `--tokens` new
  tokens;
- `evaluate`: `lm.evaluate` of the 4 runs and the base on 32 held-out bundled products;
- `many`: 30 held-out prompts on the base and one adapter: one `lm.compare([...])` call, or with
  `--one-by-one` one `lm.compare` call per prompt (the only way before the answering engine);
- `throughput` (not run by default; needs the answering engine): the base answering the first N
  of the last 64 bundled products in one batch (48 new tokens at most), N from 1 to 64: generated tokens per
  second, the prompts' reading (prefill) included;
- `probes`: a 60-step run (batch 4) with 3 probe prompts, answered four times as by default: the
  run's wall time and the time inside its probes (the trainer's `_probe`).

Run it from a checkout of another version (PYTHONPATH=that checkout) to time that version the same
way; `--one-by-one` is what a version without many-prompt `lm.compare` can run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lora_magic as lm
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.model.session import session

RATES = (1e-3, 5e-4, 2e-4, 1e-4)


def held_out(rows: list[dict], count: int) -> list[str]:
    return [row["instruction"] for row in rows[120 : 120 + count]]


def sweep(rows: list[dict], runs_dir: Path) -> list[str]:
    names = [f"rate-{rate:g}".replace(".", "_").replace("-0", "") for rate in RATES]
    for name, rate in zip(names, RATES):
        if not (runs_dir / name / "adapter" / "adapter_config.json").is_file():
            train(rows, runs_dir, steps=10, learning_rate=rate, name=name)
    return names


def train(rows: list[dict], runs_dir: Path, **settings) -> Any:
    """A completed run of the built-in model on the first 60 bundled products, no eval split."""
    run = lm.train(
        model="smollm2-135m", data=rows[:60], eval_fraction=0.0, runs_dir=runs_dir, **settings
    ).wait()
    assert run.status == "completed", run.error
    return run


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="compare,evaluate,many,probes")
    parser.add_argument("--one-by-one", action="store_true")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/answering-runs"))
    args = parser.parse_args()
    rows = load_records(str(bundled_dataset()))
    names = sweep(rows, args.runs_dir)
    for name in names:
        if name not in session().adapters:
            session().load_adapter(name, runs_dir=args.runs_dir)
    prompts = held_out(rows, 32)
    lm.compare(prompts[0], adapters=["base", names[0]], max_new_tokens=4)  # warm-up
    chosen = ["base", names[0]]
    if args.one_by_one:
        many = lambda: [lm.compare(p, adapters=chosen, max_new_tokens=args.tokens) for p in prompts[:30]]  # noqa: E731
    else:
        many = lambda: lm.compare(prompts[:30], adapters=chosen, max_new_tokens=args.tokens)  # noqa: E731
    work = {
        "compare": lambda: lm.compare(prompts[0], adapters=["base", *names[:3]], max_new_tokens=args.tokens),
        "evaluate": lambda: lm.evaluate(*names, data=rows[120:152], runs_dir=args.runs_dir),
        "many": many,
    }
    results = {}
    for case in args.cases.split(","):
        if case == "probes":
            results[case] = probes(rows, prompts[:3], args.runs_dir)
        elif case == "throughput":
            results[case] = throughput([row["instruction"] for row in rows[-64:]])
        else:
            results[case] = timed(work[case])
    print(json.dumps(results, indent=2))


def throughput(prompts: list[str]) -> dict[int, float]:
    """Generated tokens per second of the base answering the first N prompts in one batch."""
    from lora_magic.core.config import Sampling
    from lora_magic.data.templates import alpaca_prompt
    from lora_magic.model.answering import Question, answer_all

    rates = {}
    for size in (1, 2, 4, 8, 16, 32, 64):
        questions = [Question("base", alpaca_prompt(p)) for p in prompts[:size]]
        started = time.perf_counter()
        answers = answer_all(questions, Sampling(max_new_tokens=48), batch_size=size)
        rates[size] = sum(a.tokens for a in answers) / (time.perf_counter() - started)
    return rates


def probes(rows: list[dict], prompts: list[str], runs_dir: Path) -> dict[str, float]:
    from lora_magic.training.trainer import RunCallback

    spent = [0.0]
    probe = RunCallback._probe

    def timed_probe(self, step):
        started = time.perf_counter()
        try:
            return probe(self, step)
        finally:
            spent[0] += time.perf_counter() - started

    RunCallback._probe = timed_probe
    try:
        started = time.perf_counter()
        train(rows, runs_dir, steps=60, probes=prompts)
        seconds = time.perf_counter() - started
    finally:
        RunCallback._probe = probe
    return {"run_seconds": seconds, "probe_seconds": spent[0], "share": spent[0] / seconds}


if __name__ == "__main__":
    main()
