"""From a run's settings to what the trainer reads: the records cleaned, split, templated and
tokenized (`prepare`), and the same examples shown as they will be trained (`preview`).

The preview and the trainer go through the same `render` and `encode`, so what the preview shows
is what is trained.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from ..core.config import RunConfig
from ..core.errors import DataError
from .report import clean
from .sources import fingerprint, load_records, split_records
from .templates import render
from .tokens import encode, load_tokenizer


@dataclass
class Prepared:
    """Everything the trainer needs from the data, with the records kept for the run store."""

    train_records: list[dict]
    eval_records: list[dict]
    train: list[dict] = field(repr=False)
    eval: list[dict] = field(repr=False)
    fingerprint: str = ""
    cleaning: dict = field(default_factory=dict)  # rows of `data`, and those each cleaning rule dropped

    @property
    def train_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.train)


def prepare(config: RunConfig, tokenizer: Any) -> Prepared:
    """The run's data: loaded, cleaned, split, templated and tokenized, in training order."""
    records, cleaning = clean(load_records(config.data), config, tokenizer)
    train_records, eval_records = split_records(config, records)

    def encoded(records: list[dict]) -> list[dict]:
        out = []
        for row, record in enumerate(records):
            example = encode(*render(record, row, config, tokenizer), tokenizer, config)
            if all(label == -100 for label in example["labels"]):
                raise DataError(
                    f"row {row}: the prompt alone fills max_length={config.max_length} tokens, so nothing "
                    "is left to learn; raise max_length or shorten the prompt"
                )
            out.append({"input_ids": example["input_ids"], "labels": example["labels"]})
        return out

    train = encoded(train_records)
    if config.order == "length":  # short to long; the trainer then reads the examples in order
        order = sorted(range(len(train)), key=lambda i: len(train[i]["input_ids"]))
        train_records, train = [train_records[i] for i in order], [train[i] for i in order]
    return Prepared(
        train_records,
        eval_records,
        train,
        encoded(eval_records),
        fingerprint(train_records, eval_records),
        cleaning,
    )


# -- the preview -----------------------------------------------------------------------------------------
@dataclass
class PreviewExample:
    row: int
    prompt: str
    completion: str
    tokens: int
    trained_tokens: int
    truncated: bool
    pieces: list[tuple[str, bool]]  # (decoded token, carries loss)


@dataclass
class DataPreview:
    """What the model will be trained on: rendered examples, token counts, truncation, the loss mask."""

    examples: list[PreviewExample]
    count: int
    eval_count: int
    mean_tokens: float
    max_tokens: int
    truncated: int
    max_length: int

    def summary(self) -> str:
        return (
            f"{self.count} training examples, {self.eval_count} for evaluation; tokens per example: "
            f"mean {self.mean_tokens:.0f}, max {self.max_tokens}; {self.truncated} longer than "
            f"max_length={self.max_length} (truncated)"
        )

    def __repr__(self) -> str:
        parts = [self.summary(), "Tokens that carry loss are shown between ⟦ and ⟧."]
        for ex in self.examples:
            marked = "".join(f"⟦{piece}⟧" if trained else piece for piece, trained in _merge(ex.pieces))
            parts.append(f"--- row {ex.row}: {ex.tokens} tokens, {ex.trained_tokens} trained ---\n{marked}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        rows = [f"<p>{html.escape(self.summary())}. <mark>Highlighted</mark> tokens carry loss.</p>"]
        for ex in self.examples:
            body = "".join(
                f"<mark>{html.escape(piece)}</mark>" if trained else html.escape(piece)
                for piece, trained in _merge(ex.pieces)
            )
            rows.append(
                f"<details open><summary>row {ex.row}: {ex.tokens} tokens, {ex.trained_tokens} trained"
                f"{' (truncated)' if ex.truncated else ''}</summary>"
                f"<pre style='white-space:pre-wrap'>{body}</pre></details>"
            )
        return "\n".join(rows)


def _merge(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    merged: list[tuple[str, bool]] = []
    for piece, trained in pieces:
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + piece, trained)
        else:
            merged.append((piece, trained))
    return merged


def preview(
    config: RunConfig | None = None, n: int = 3, tokenizer: Any = None, **settings: Any
) -> DataPreview:
    """Render the first `n` training examples exactly as they will be trained, with statistics."""
    config = (config or RunConfig()).replace(**settings)
    if tokenizer is None:
        tokenizer = load_tokenizer(config)
    train, evaluation = split_records(config)
    lengths, examples = [], []
    for row, record in enumerate(train):
        prompt, completion = render(record, row, config, tokenizer)
        encoded = encode(prompt, completion, tokenizer, config)
        lengths.append(encoded["length"])
        if row < n:
            pieces = [
                (tokenizer.decode([token]), label != -100)
                for token, label in zip(encoded["input_ids"], encoded["labels"])
            ]
            examples.append(
                PreviewExample(
                    row,
                    prompt,
                    completion,
                    encoded["length"],
                    sum(trained for _, trained in pieces),
                    encoded["length"] > config.max_length,
                    pieces,
                )
            )
    return DataPreview(
        examples,
        len(train),
        len(evaluation),
        sum(lengths) / len(lengths),
        max(lengths),
        sum(length > config.max_length for length in lengths),
        config.max_length,
    )
