"""Training data: sources -> records -> templated prompt/completion -> tokens with a loss mask.

The preview and the trainer use the same `encode`, so what the preview shows is what is trained.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import DataError

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_END = "### End"
FILE_KINDS = {".jsonl": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
DATA_SUFFIXES = tuple(FILE_KINDS)
BUNDLED = Path(__file__).parent / "datasets"


# -- sources -----------------------------------------------------------------------------------------
def load_records(source: Any) -> list[dict[str, Any]]:
    """Records (dicts) from a DataFrame, list of dicts, datasets.Dataset/DatasetDict or file path."""
    if source is None:
        raise DataError(
            "no training data given: set data to a DataFrame, a list of dicts, a Dataset or a file path"
        )
    if isinstance(source, str | Path):
        records = _read_file(Path(source).expanduser())
    elif type(source).__name__ == "DataFrame":
        records = source.to_dict("records")
    elif type(source).__name__ == "DatasetDict":
        if "train" not in source:
            raise DataError(f"the DatasetDict has no 'train' split; its splits are: {', '.join(source)}")
        records = list(source["train"])
    elif isinstance(source, list | tuple) or type(source).__name__ == "Dataset":
        records = list(source)
    else:
        raise DataError(
            f"data of type {type(source).__name__} is not supported; use a DataFrame, a list of dicts, "
            f"a datasets.Dataset/DatasetDict or a path ending in {', '.join(DATA_SUFFIXES)}"
        )
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"row {row} is a {type(record).__name__}, not a record of named fields (a dict)")
    if not records:
        raise DataError("the training data is empty")
    return [dict(r) for r in records]


def bundled_dataset(name: str = "products") -> Path:
    """A small dataset that ships with the package (used by the demo and the examples)."""
    return BUNDLED / f"{name}.jsonl"


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"no data file at {path}")
    kind = FILE_KINDS.get(path.suffix)
    if kind is None:
        raise DataError(f"{path.name}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}")
    try:
        return _parse_file(path)
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a valid {kind} file: it is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path} is not a valid {kind} file: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except (ValueError, OSError) as error:  # what pandas and pyarrow raise on a malformed file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a valid {kind} file: {reason}") from None


def _parse_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON: {error.msg}") from None
        return records
    if path.suffix == ".json":
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, list):
            raise DataError(f"{path} must hold a JSON list of records, not a {type(loaded).__name__}")
        return loaded
    import pandas as pd  # .csv or .parquet

    frame = pd.read_csv(path, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    return frame.to_dict("records")


def split_records(config: RunConfig, train: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(train, eval) records: eval_data if given, else the DatasetDict's eval split, else a seeded split.

    `train` is the records of `data` when they are already loaded (and cleaned).
    """
    train = load_records(config.data) if train is None else train
    if config.eval_data is not None:
        evaluation = load_records(config.eval_data)
    elif type(config.data).__name__ == "DatasetDict" and ({"validation", "test"} & set(config.data)):
        evaluation = list(config.data["validation" if "validation" in config.data else "test"])
    elif config.eval_fraction > 0 and len(train) >= 2:
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        cut = max(1, round(len(train) * config.eval_fraction))
        evaluation, train = [train[i] for i in sorted(order[:cut])], [train[i] for i in sorted(order[cut:])]
    else:
        evaluation = []
    if config.max_examples and config.max_examples < len(train):  # a seeded subset, in data order
        kept = sorted(random.Random(config.seed).sample(range(len(train)), config.max_examples))
        train = [train[i] for i in kept]
    return train, [dict(r) for r in evaluation]


def fingerprint(*record_lists: list[dict]) -> str:
    digest = hashlib.sha256()
    for records in record_lists:
        digest.update(json.dumps(records, sort_keys=True, default=str).encode())
    return "sha256:" + digest.hexdigest()[:16]


# -- templates ---------------------------------------------------------------------------------------
def _text(record: dict, field_name: str, row: int, optional: bool = False, blank: bool = False) -> str:
    if field_name not in record:
        if optional:
            return ""
        raise DataError(
            f"row {row} has no field {field_name!r}; its fields are: {', '.join(map(str, record))}"
        )
    value = record[field_name]
    if optional and value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"row {row}, field {field_name!r}: expected text, got {type(value).__name__} {value!r:.60}"
        )
    if not (optional or blank) and not value.strip():
        raise DataError(f"row {row}, field {field_name!r} is empty")
    return value


def format_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def template_fields(config: RunConfig) -> tuple[list[str], list[str]]:
    """(prompt fields, response fields): the record fields the template reads."""
    if config.template == "custom":
        response = list(dict.fromkeys(format_fields(config.response_format)))
        prompt = [name for name in dict.fromkeys(format_fields(config.prompt_format)) if name not in response]
        return prompt, response
    return [config.instruction_field, config.input_field], [config.response_field]


def field_values(record: dict, row: int, config: RunConfig) -> dict[str, str]:
    """The text of each field the template reads, prompt fields first; blank values are kept."""
    prompt, response = template_fields(config)
    optional = config.input_field if config.template != "custom" else None
    return {
        name: _text(record, name, row, optional=name == optional, blank=True) for name in prompt + response
    }


def render(record: dict, row: int, config: RunConfig, tokenizer: Any) -> tuple[str, str]:
    """(prompt, completion) text of one record in the configured template."""
    if config.template == "custom":
        values = {
            name: _text(record, name, row)
            for name in format_fields(config.prompt_format + config.response_format)
        }
        return config.prompt_format.format(**values), config.response_format.format(**values)
    instruction = _text(record, config.instruction_field, row)
    context = _text(record, config.input_field, row, optional=True)
    response = _text(record, config.response_field, row)
    if config.template == "alpaca":
        return alpaca_prompt(instruction, context), f"{response}\n\n{ALPACA_END}"
    prompt = chat_prompt(instruction, context, config, tokenizer)
    full = tokenizer.apply_chat_template(
        [*_messages(instruction, context, config), {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        raise DataError(
            "this tokenizer's chat template does not render the prompt as a prefix of the full chat"
        )
    return prompt, full[len(prompt) :].rstrip()


def alpaca_prompt(instruction: str, context: str = "") -> str:
    extra = f"### Input:\n{context}\n\n" if context.strip() else ""
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n{extra}### Response:\n"


def _messages(instruction: str, context: str, config: RunConfig) -> list[dict[str, str]]:
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    content = f"{instruction}\n\n{context}" if context.strip() else instruction
    return [*system, {"role": "user", "content": content}]


def chat_prompt(instruction: str, context: str, config: RunConfig, tokenizer: Any) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "template='chat' needs a tokenizer with a chat template; this one has none (use 'alpaca' or 'custom')"
        )
    return tokenizer.apply_chat_template(
        _messages(instruction, context, config), tokenize=False, add_generation_prompt=True
    )


def prompt_for(text: str, config: RunConfig, tokenizer: Any) -> str:
    """A user's prompt in the template a run was trained with, so base and adapter see the same input."""
    if config.template == "alpaca":
        return alpaca_prompt(text)
    if config.template == "chat":
        return chat_prompt(text, "", config, tokenizer)
    fields = format_fields(config.prompt_format)
    return config.prompt_format.format(**{fields[0]: text}) if len(set(fields)) == 1 else text


# -- tokens ------------------------------------------------------------------------------------------
def encode(prompt: str, completion: str, tokenizer: Any, config: RunConfig) -> dict[str, Any]:
    """input_ids and labels (-100 where no loss), EOS appended, truncated to max_length."""
    prompt_ids = tokenizer(prompt, add_special_tokens=config.template != "chat")["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and completion_ids[-1:] != [tokenizer.eos_token_id]:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    ids = prompt_ids + completion_ids
    labels = (list(prompt_ids) if config.train_on_prompt else [-100] * len(prompt_ids)) + completion_ids
    return {
        "input_ids": ids[: config.max_length],
        "labels": labels[: config.max_length],
        "length": len(ids),
    }


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
    from .datacheck import clean  # datacheck builds on this module

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


# -- preview -----------------------------------------------------------------------------------------
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


def load_tokenizer(config: RunConfig) -> Any:
    """The tokenizer of the configured model, without loading the model."""
    from transformers import AutoTokenizer

    from .models import hub_offline, resolve_model

    resolved = resolve_model(config.model)
    return AutoTokenizer.from_pretrained(
        resolved,
        trust_remote_code=config.trust_remote_code,
        local_files_only=hub_offline(resolved, config.model),
    )


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
