"""The data report and the cleaning rules: what in the training data costs compute and teaches little.

Both see the data as training does: loaded, templated and tokenised as `prepare.py` does it. Rows are numbered
as in `data`, from 0. `inspect_data` reports on every row; `clean` applies a run's cleaning settings
(`min_response_tokens`, `drop_template_markers`, `dedup`) and says which rows each rule dropped.
"""

from __future__ import annotations

import base64
import html
import io
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..core.config import RunConfig
from ..core.errors import DataError
from ..core.record import describe_cleaning
from .sources import load_records
from .templates import field_values, render, template_fields
from .tokens import encode, load_tokenizer

SHORT_RESPONSE = 4  # tokens: the report calls shorter responses short (or min_response_tokens, if more)
SHINGLE = 3  # near-duplicates compare the sets of word 3-grams of two rows
PERMUTATIONS = 128
SENTINEL = "\ue000"  # stands for every field when the template's own text is rendered
SHOWN_ROWS = 20  # rows listed per finding in the text and HTML views


class Rows:
    """Facts about each row of the data, each computed once and only when a rule or the report asks."""

    def __init__(self, records: list[dict], config: RunConfig, tokenizer: Any):
        self.records, self.config, self.tokenizer = records, config, tokenizer

    @cached_property
    def fields(self) -> list[dict[str, str]]:
        return [field_values(record, row, self.config) for row, record in enumerate(self.records)]

    @cached_property
    def responses(self) -> list[str]:
        names = template_fields(self.config)[1]
        return ["\n".join(values[name] for name in names).strip() for values in self.fields]

    @cached_property
    def response_tokens(self) -> list[int]:
        ids = self.tokenizer(self.responses, add_special_tokens=False)["input_ids"]
        return [len(row_ids) for row_ids in ids]

    @cached_property
    def encoded(self) -> dict[int, dict]:
        """Tokens, labels and full length of each row with a response (an empty one has no example)."""
        config, tokenizer = self.config, self.tokenizer
        return {
            row: encode(*render(record, row, config, tokenizer), tokenizer, config)
            for row, record in enumerate(self.records)
            if self.responses[row]
        }

    @cached_property
    def markers(self) -> list[str]:
        return template_markers(self.config, self.tokenizer)

    @cached_property
    def marked(self) -> dict[int, str]:
        """Rows whose fields contain one of the template's markers, with the first one found."""
        found = {}
        for row, values in enumerate(self.fields):
            hits = [
                f"{marker!r} in {name}"
                for name, text in values.items()
                for marker in self.markers
                if marker in text
            ]
            if hits:
                found[row] = hits[0]
        return found

    @cached_property
    def repeated_prompts(self) -> list[int]:
        """Rows whose response contains the whole instruction (case and spacing ignored)."""
        prompt = template_fields(self.config)[0]
        if not prompt:
            return []
        return [
            row
            for row, values in enumerate(self.fields)
            if _plain(values[prompt[0]]) and _plain(values[prompt[0]]) in _plain(self.responses[row])
        ]

    def exact_duplicates(self, rows: list[int]) -> dict[int, int]:
        """Rows whose fields repeat an earlier row's exactly, with that row."""
        first: dict[tuple, int] = {}
        found = {}
        for row in rows:
            key = tuple(self.fields[row].values())
            if key in first:
                found[row] = first[key]
            else:
                first[key] = row
        return found

    @cached_property
    def shingles(self) -> list[set[str]]:
        out = []
        for values in self.fields:
            words = re.findall(r"\w+", " ".join(values.values()).lower())
            count = max(1, len(words) - SHINGLE + 1) if words else 0
            out.append({" ".join(words[i : i + SHINGLE]) for i in range(count)})
        return out

    @cached_property
    def minhashes(self) -> list[Any]:
        from datasketch import MinHash

        return MinHash.bulk(
            [[s.encode() for s in shingles] for shingles in self.shingles], num_perm=PERMUTATIONS
        )

    def near_duplicates(self, rows: list[int]) -> dict[int, tuple[int, float]]:
        """Rows (not exact copies) at least `dedup_threshold` similar to an earlier row that stays,
        with that row and the similarity: the Jaccard similarity of their word 3-grams."""
        from datasketch import MinHashLSH

        threshold = self.config.dedup_threshold
        # LSH only proposes candidates; the exact similarity of each decides. Set below the
        # threshold and weighted against misses, it proposes over 99 % of the pairs that are
        # exactly at the threshold (whatever the threshold), and more of those above it.
        index = MinHashLSH(threshold=0.75 * threshold, num_perm=PERMUTATIONS, weights=(0.1, 0.9))
        exact = self.exact_duplicates(rows)
        found = {}
        for row in rows:
            if row in exact or not self.shingles[row]:
                continue
            candidates = [
                (o, _jaccard(self.shingles[row], self.shingles[o])) for o in index.query(self.minhashes[row])
            ]
            # the most similar candidate, the earliest of equals
            best = max(candidates, key=lambda pair: (pair[1], -pair[0]), default=None)
            if best and best[1] >= threshold:
                found[row] = best
            else:
                index.insert(row, self.minhashes[row])
        return found


def _plain(text: str) -> str:
    return " ".join(text.lower().split())


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def template_markers(config: RunConfig, tokenizer: Any) -> list[str]:
    """The template's own text around the fields, line by line (e.g. '### Response:'), with the
    special tokens in it and the end-of-sequence token that closes every example."""
    prompt, response = template_fields(config)
    text = "".join(render(dict.fromkeys(prompt + response, SENTINEL), 0, config, tokenizer))
    lines = {line.strip() for part in text.split(SENTINEL) for line in part.splitlines()}
    specials = {token for token in tokenizer.all_special_tokens if token in text}
    found = (lines | specials | {tokenizer.eos_token or ""}) - {""}
    return sorted(found, key=lambda marker: (marker not in text, text.find(marker)))


# -- cleaning ----------------------------------------------------------------------------------------
def _rules(rows: Rows) -> list[tuple[str, bool, Callable[[list[int]], list[int]]]]:
    """(name, on in this config, the rows among those given that the rule drops), in the order they run."""
    config = rows.config
    return [
        (
            "short_responses",
            config.min_response_tokens > 0,
            lambda kept: [r for r in kept if rows.response_tokens[r] < config.min_response_tokens],
        ),
        (
            "template_markers",
            config.drop_template_markers,
            lambda kept: [r for r in kept if r in rows.marked],
        ),
        ("exact_duplicates", config.dedup != "none", lambda kept: list(rows.exact_duplicates(kept))),
        ("near_duplicates", config.dedup == "near", lambda kept: list(rows.near_duplicates(kept))),
    ]


def _clean(rows: Rows) -> tuple[list[int], dict]:
    kept, dropped = list(range(len(rows.records))), {}
    for name, on, drops in _rules(rows):
        if on:
            dropped[name] = drops(kept)
            gone = set(dropped[name])
            kept = [row for row in kept if row not in gone]
    return kept, {"rows": len(rows.records), "kept": len(kept), "dropped": dropped}


def clean(records: list[dict], config: RunConfig, tokenizer: Any) -> tuple[list[dict], dict]:
    """The records that the cleaning settings keep, and a JSON-ready account: how many rows there
    were, how many are kept, and which rows each rule dropped.

    The rules run in this order, each on the rows the ones before kept: short responses, template
    markers, exact duplicates, near-duplicates. Of duplicates, the first row is kept.
    """
    kept, cleaning = _clean(Rows(records, config, tokenizer))
    if not kept:
        raise DataError(
            f"{describe_cleaning(cleaning)}: nothing is left to train on; relax the cleaning settings"
        )
    return [records[row] for row in kept], cleaning


# -- the report --------------------------------------------------------------------------------------
@dataclass
class Finding:
    """Rows with one kind of problem; `notes` says more about some of them (e.g. which row they copy)."""

    name: str
    title: str
    rows: list[int]
    notes: dict[int, str] = field(default_factory=dict)

    def listing(self, limit: int = SHOWN_ROWS) -> str:
        shown = [f"{row} ({self.notes[row]})" if row in self.notes else str(row) for row in self.rows[:limit]]
        more = f" … and {len(self.rows) - limit} more" if len(self.rows) > limit else ""
        return ", ".join(shown) + more


@dataclass
class DataReport:
    """What the training data holds, as the run would see it, and which rows waste compute."""

    rows: int
    template: str
    max_length: int
    batch_size: int
    lengths: dict[int, int] = field(repr=False)  # full tokens of each row, before truncation
    tokens: int  # tokens trained on, after truncation
    loss_tokens: int  # of which carry loss
    padding: dict[str, float]  # share of the batch tokens that is padding, by order
    markers: list[str]
    findings: dict[str, Finding]
    cleaning: dict | None  # what this config's cleaning settings drop, if any is on

    def summary(self) -> list[str]:
        lengths = sorted(self.lengths.values()) or [0]
        truncated = len(self.findings["truncated"].rows)
        lines = [
            f"{self.rows} rows of data in the {self.template} template.",
            f"Tokens per row: median {statistics.median(lengths):.0f}, 95th percentile "
            f"{lengths[int(0.95 * (len(lengths) - 1))]}, max {lengths[-1]}; {truncated} longer than "
            f"max_length={self.max_length} (truncated).",
            f"{self.loss_tokens / max(self.tokens, 1):.0%} of the {self.tokens:,} tokens trained on carry loss.",
            f"Padding in batches of {self.batch_size}: {self.padding['shuffle']:.0%} of the batch tokens "
            f"shuffled, {self.padding['length']:.0%} in length order.",
        ]
        if self.cleaning:
            lines.append((describe_cleaning(self.cleaning) or "cleaning drops no rows").capitalize() + ".")
        return lines

    def __repr__(self) -> str:
        lines = self.summary()
        for finding in self.findings.values():
            rows = f": rows {finding.listing()}" if finding.rows else ""
            lines.append(f"  {len(finding.rows):>5}  {finding.title}{rows}")
        lines.append("Markers of the template: " + ", ".join(map(repr, self.markers)))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:right'>{len(f.rows)}</td><td>{html.escape(f.title)}</td>"
            f"<td style='text-align:left'>{html.escape(f.listing())}</td></tr>"
            for f in self.findings.values()
        )
        picture = base64.b64encode(self.png()).decode()
        return (
            "<div class='lora-magic-data-report'>"
            + "".join(f"<p style='margin:2px 0'>{html.escape(line)}</p>" for line in self.summary())
            + f"<img src='data:image/png;base64,{picture}' alt='token lengths against max_length'>"
            "<table><tr><th>rows</th><th>finding</th><th style='text-align:left'>which rows</th></tr>"
            + rows
            + "</table><p>Markers of the template: "
            + html.escape(", ".join(map(repr, self.markers)))
            + "</p></div>"
        )

    @cached_property
    def _png(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 2.6), dpi=80)
        figure.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.18)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        lengths = list(self.lengths.values())
        fits = [n for n in lengths if n <= self.max_length]
        longer = [n for n in lengths if n > self.max_length]
        axes.hist(
            [fits, longer], bins=30, stacked=True, color=["tab:blue", "tab:red"], label=["fits", "truncated"]
        )
        axes.axvline(self.max_length, color="black", linestyle="--", label=f"max_length {self.max_length}")
        axes.set_xlabel("tokens per row (prompt + response)")
        axes.set_ylabel("rows")
        axes.legend(loc="upper right", fontsize="small")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def png(self) -> bytes:
        """The histogram of token lengths against max_length, as PNG."""
        return self._png


def report(rows: Rows) -> DataReport:
    config = rows.config
    encoded = rows.encoded
    trained = [len(e["input_ids"]) for e in encoded.values()]
    shuffled = random.Random(config.seed).sample(trained, len(trained))
    short = max(config.min_response_tokens, SHORT_RESPONSE)
    every = list(range(len(rows.records)))
    exact, near = rows.exact_duplicates(every), rows.near_duplicates(every)
    longer = {r: f"{e['length']} tokens" for r, e in encoded.items() if e["length"] > config.max_length}
    shorter = {r: f"{n} tokens" for r, n in enumerate(rows.response_tokens) if 0 < n < short}
    findings = [
        Finding("truncated", f"longer than max_length={config.max_length} (truncated)", list(longer), longer),
        Finding(
            "nothing_to_learn",
            "prompts that fill max_length, leaving no response to learn (training refuses them)",
            [r for r, e in encoded.items() if all(label == -100 for label in e["labels"])],
        ),
        Finding(
            "exact_duplicates",
            "exact duplicates of an earlier row",
            list(exact),
            {r: f"= row {o}" for r, o in exact.items()},
        ),
        Finding(
            "near_duplicates",
            f"near-duplicates of an earlier row (word 3-gram Jaccard ≥ {config.dedup_threshold:g})",
            list(near),
            {r: f"{similarity:.2f} like row {o}" for r, (o, similarity) in near.items()},
        ),
        Finding(
            "empty_responses", "empty responses", [r for r, n in enumerate(rows.response_tokens) if n == 0]
        ),
        Finding("short_responses", f"short responses (under {short} tokens)", list(shorter), shorter),
        Finding("repeated_prompts", "responses that repeat the instruction", rows.repeated_prompts),
        Finding(
            "template_markers", "fields containing the template's own markers", list(rows.marked), rows.marked
        ),
    ]
    return DataReport(
        rows=len(rows.records),
        template=config.template,
        max_length=config.max_length,
        batch_size=config.batch_size,
        lengths={r: e["length"] for r, e in encoded.items()},
        tokens=sum(trained),
        loss_tokens=sum(label != -100 for e in encoded.values() for label in e["labels"]),
        padding={
            "shuffle": _padding(shuffled, config.batch_size),
            "length": _padding(sorted(trained), config.batch_size),
        },
        markers=rows.markers,
        findings={f.name: f for f in findings},
        cleaning=_clean(rows)[1] if any(on for _, on, _ in _rules(rows)) else None,
    )


def _padding(lengths: list[int], batch_size: int) -> float:
    """Share of the tokens of batches (padded to their longest row) that is padding."""
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    padded = sum(max(batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / padded if padded else 0.0


def inspect_data(config: RunConfig | None = None, tokenizer: Any = None, **settings: Any) -> DataReport:
    """Report on the rows of `data` as a run with these settings would see them: token lengths
    against max_length, padding, the share of tokens with loss, duplicates, empty or short
    responses, responses that repeat the instruction and fields holding the template's markers."""
    config = (config or RunConfig()).replace(**settings)
    if tokenizer is None:
        tokenizer = load_tokenizer(config)
    return report(Rows(load_records(config.data), config, tokenizer))
