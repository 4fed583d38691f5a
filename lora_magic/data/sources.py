"""Data sources: records (dicts) from a DataFrame, a list of dicts, a `datasets.Dataset` or a file,
and the split of them into training and evaluation records.

A source is read by the first reader in READERS that accepts it; a new kind of source is one
reader added there.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..core.config import RunConfig
from ..core.errors import DataError

FILE_KINDS = {".jsonl": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
DATA_SUFFIXES = tuple(FILE_KINDS)
BUNDLED = Path(__file__).parent.parent / "datasets"


# -- sources -----------------------------------------------------------------------------------------
def load_records(source: Any) -> list[dict[str, Any]]:
    """Records (dicts) from a DataFrame, list of dicts, datasets.Dataset/DatasetDict or file path."""
    if source is None:
        raise DataError(
            "no training data given: set data to a DataFrame, a list of dicts, a Dataset or a file path"
        )
    reader = next((read for accepts, read in READERS if accepts(source)), None)
    if reader is None:
        raise DataError(
            f"data of type {type(source).__name__} is not supported; use a DataFrame, a list of dicts, "
            f"a datasets.Dataset/DatasetDict or a path ending in {', '.join(DATA_SUFFIXES)}"
        )
    records = reader(source)
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"row {row} is a {type(record).__name__}, not a record of named fields (a dict)")
        odd = next((key for key in record if not isinstance(key, str)), None)
        if odd is not None:
            raise DataError(f"row {row} has a field named {odd!r}, not by text; name every field with text")
    if not records:
        raise DataError("the training data is empty")
    return [dict(r) for r in records]


def _kind(name: str) -> Callable[[Any], bool]:
    return lambda source: type(source).__name__ == name


def _dataset_dict(source: Any) -> list:
    if "train" not in source:
        raise DataError(f"the DatasetDict has no 'train' split; its splits are: {', '.join(source)}")
    return list(source["train"])


# (accepts, read): the kinds of source, tried in order
READERS: list[tuple[Callable[[Any], bool], Callable[[Any], list]]] = [
    (lambda source: isinstance(source, str | Path), lambda source: _read_file(Path(source).expanduser())),
    (_kind("DataFrame"), lambda frame: frame.to_dict("records")),
    (_kind("DatasetDict"), _dataset_dict),
    (lambda source: isinstance(source, list | tuple) or _kind("Dataset")(source), list),
]


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
    except RecursionError:
        raise DataError(
            f"{path}: its values are nested too deeply to read; records hold text fields"
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
        if cut >= len(train):
            raise DataError(
                f"eval_fraction={config.eval_fraction} of {len(train)} rows holds out {cut}, leaving none to "
                "train on; lower eval_fraction or give more rows"
            )
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
