"""How long the data report takes on the bundled products, text and picture included.

    python benchmarks/data_report.py [--copies 20]

Run it in a fresh process: the first report also pays for importing datasketch (with scipy) and
matplotlib, the second shows the report alone. The tokenizer is loaded before the clock starts.
With --copies N the products are repeated N times, each copy renamed, to see how the report grows.
"""

from __future__ import annotations

import argparse
import json
import time

from lora_magic.core.config import RunConfig
from lora_magic.data.sources import bundled_dataset
from lora_magic.data.tokens import load_tokenizer


def products(copies: int) -> list[dict]:
    rows = [json.loads(line) for line in bundled_dataset().read_text().splitlines()]
    return [
        {key: f"{value} (edition {copy})" if copy else value for key, value in row.items()}
        for copy in range(copies)
        for row in rows
    ]


def timed(config: RunConfig, tokenizer) -> float:
    from lora_magic.data.report import inspect_data

    start = time.perf_counter()
    report = inspect_data(config, tokenizer=tokenizer)
    report._repr_html_()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20, help="Also time the products repeated this often.")
    args = parser.parse_args()
    config = RunConfig(data=products(1))
    tokenizer = load_tokenizer(config)
    print("| data | rows | seconds |")
    print("| --- | --- | --- |")
    print(f"| bundled products, first report (imports included) | 160 | {timed(config, tokenizer):.2f} |")
    print(f"| bundled products, again | 160 | {timed(config, tokenizer):.2f} |")
    many = config.replace(data=products(args.copies))
    print(f"| products × {args.copies}, renamed copies | {len(many.data)} | {timed(many, tokenizer):.2f} |")


if __name__ == "__main__":
    main()
