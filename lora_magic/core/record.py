"""The run record: what `run.json` holds, how it is made and how its parts read as text.

The run store writes it atomically; every process reads it (the kernel that trains, a worker, a
later kernel, the Jupyter Server extension), so it is plain JSON and read tolerantly: a record
written by an older version lacks some keys, and readers use `.get`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from typing import Any, TypedDict

from .catalogue import remote_code
from .config import RunConfig
from .errors import RunError
from .events import RUNNING

VERSIONED = ("lora_magic", "torch", "transformers", "peft", "trl", "bitsandbytes")


class RunRecord(TypedDict, total=False):
    name: str
    status: str  # one of events.STATUSES
    created: float
    started: float  # when the first step began
    finished: float
    updated: float  # when run.json was last written
    pid: int  # the process that trains the run, on `host`
    host: str
    launched: list[str]  # the command that started its worker processes (launch 'process' / 'accelerate')
    config: dict[str, Any]  # RunConfig.to_dict(): the settings it was started with
    model: str
    resolved_model: str  # the folder or Hub id it was loaded from
    quantization: str
    device: str  # 'cuda' or 'cpu'
    machine: dict[str, Any]  # hardware.Machine: what the trainer found and trained on
    hardware: dict[str, Any]  # hardware.Hardware: dtype, precision and checkpointing it chose there
    versions: dict[str, str]
    data_fingerprint: str
    base_fingerprint: str
    cleaning: dict[str, Any]  # rows, kept, and the rows each cleaning rule dropped
    examples: dict[str, int]  # train and eval rows
    targets: list[str]  # the LoRA target modules
    plan: dict[str, Any] | None  # the memory estimate (model/memory.py), beside the measured peak
    sweep: dict[str, Any] | None  # {name, knobs} for a run of a sweep
    step: int
    total_steps: int
    loss: float  # the last logged training loss
    eta: float
    trainable_params: int
    total_params: int
    metrics: dict[str, float]
    error: str | None
    warning: str | None
    adapter_path: str
    tracking: dict[str, Any]


def new(name: str, config: RunConfig, **facts: Any) -> RunRecord:
    """The record of a run about to start: its settings and the facts the caller found."""
    return RunRecord(
        name=name,
        status=RUNNING,
        created=time.time(),
        config=config.to_dict(),
        model=config.model,
        quantization=config.quantization,
        versions=versions(),
        step=0,
        total_steps=0,
        metrics={},
        error=None,
        **facts,
    )


def versions() -> dict[str, str]:
    found = {}
    for package in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def stored_config(record: dict[str, Any]) -> RunConfig:
    """The settings a run was started with, as recorded in its run.json (data sources excluded:
    the run's own data/ folder holds the records it used). A run folder may come from anyone, so
    its settings never allow running the code shipped with a model: trust_remote_code is off here
    (`config_to_load` is how a caller allows it)."""
    settings = record.get("config")
    if not isinstance(settings, dict):
        raise RunError(f"run {record.get('name')!r} has no settings in its run.json")
    kept = {k: v for k, v in settings.items() if k not in ("data", "eval_data", "trust_remote_code")}
    return RunConfig.from_dict(kept)


def config_to_load(record: dict[str, Any], trust_remote_code: bool = False) -> RunConfig:
    """The settings to load a stored run's model with. A run that was trained with
    trust_remote_code gets it only when the caller allows it in this call (the user's own
    `trust_remote_code=True` or `--trust-remote-code`); without, it is refused before anything
    loads, naming the code that would run."""
    config = stored_config(record)
    if (record.get("config") or {}).get("trust_remote_code") is not True:
        return config
    if not trust_remote_code:
        raise RunError(
            f"run {record.get('name')!r} was trained with trust_remote_code: loading it runs "
            f"{remote_code(config.model)}. Settings read from a run folder never allow that; if you "
            "trust that code, allow it in this call: trust_remote_code=True (in a magic: --trust-remote-code)"
        )
    return config.replace(trust_remote_code=True)


def describe_cleaning(cleaning: dict | None) -> str:
    """'cleaning dropped 7 of 180 rows: 5 exact_duplicates, 2 template_markers', or '' when no rule ran."""
    if not cleaning or not cleaning.get("dropped"):
        return ""
    dropped = cleaning["dropped"]
    parts = ", ".join(f"{len(rows)} {name}" for name, rows in dropped.items())
    return f"cleaning dropped {cleaning['rows'] - cleaning['kept']} of {cleaning['rows']} rows: {parts}"


def describe_estimate(plan: dict[str, Any] | None) -> str:
    """'estimated peak 1.64 GiB (fits in CPU's 18.6 GiB)' for a run.json estimate; '' without one."""
    if not plan:
        return ""
    return (
        f"estimated peak {plan['memory_gib']['total']:.2f} GiB "
        f"({plan['verdict']} in {plan['machine']}'s {plan['machine_gib']:.1f} GiB)"
    )
