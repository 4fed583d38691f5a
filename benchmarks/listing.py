"""The run listing of the server extension against the size of the run store: the first page
(`GET runs`, 200 runs) and the whole store read at once (what the listing cost before it was paged).

    .venv/bin/python benchmarks/listing.py [--runs 1000 10000 100000]

The runs are written as RunStore writes them (a run.json each), in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lora_magic.core.store import RunStore
from lora_magic.server.handlers import RUNS_PAGE, SUMMARY_KEYS, to_json

RECORD = {
    "status": "completed",
    "config": {"model": "smollm2-135m", "steps": 40, "r": 8, "targets": "all-linear"},
    "model": "smollm2-135m",
    "step": 40,
    "total_steps": 40,
    "metrics": {"train_loss": 1.5, "eval_loss": 1.7},
}


def seconds(listing, store: RunStore) -> float:
    started = time.perf_counter()
    listing(store)
    return time.perf_counter() - started


def first_page(store: RunStore) -> str:
    """What `GET runs` answers."""
    records, _ = store.page(RUNS_PAGE)
    return to_json({"runs": [{key: r.get(key) for key in SUMMARY_KEYS} for r in records]})


def every_run(store: RunStore) -> str:
    """What the listing answered before it was paged."""
    return to_json({"runs": [{key: r.get(key) for key in SUMMARY_KEYS} for r in store.list()]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parser.parse_args()
    print("| runs in the store | first page (s) | every run at once (s) |\n| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        root, made = Path(folder), 0
        for size in sorted(args.runs):
            for number in range(made, size):
                (root / f"run-{number:06d}").mkdir()
                (root / f"run-{number:06d}" / "run.json").write_text(
                    json.dumps({**RECORD, "name": f"run-{number}"})
                )
            made = size
            store = RunStore(root)
            print(
                f"| {size:,} | {seconds(first_page, store):.2f} | {seconds(every_run, store):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
