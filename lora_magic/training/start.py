"""Starting runs: `lm.train`, `lm.resume`, and a worker process's training of a run folder.

`train()` does everything that can fail on user input first, in the caller's thread (settings,
data, model, target layers), so mistakes are immediate and leave nothing in the run store. Only
then is the run folder created and the training started: in this kernel's worker thread, or in
worker processes (launch 'process' or 'accelerate') that the returned Run follows.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from ..core import record as run_record
from ..core.catalogue import base_fingerprint, resolve_model, same_base
from ..core.config import RunConfig, changed_settings
from ..core.errors import ConfigError, RunError
from ..core.events import ACTIVE, FAILED, INTERRUPTED, RESUMABLE, RUNNING, STATUS, History
from ..core.hardware import Hardware, Machine, detect
from ..core.record import config_to_load
from ..core.store import RunStore, no_space
from ..data.prepare import prepare
from ..data.tokens import load_tokenizer
from ..model import memory
from ..model.session import session
from ..model.targets import OUTPUT_HEADS, check_rank, resolve_targets
from . import tracking
from .launch import launch
from .run import Run
from .trainer import Training, manager

HOST = socket.gethostname()


def train(
    config: RunConfig | None = None,
    /,
    *,
    runs_dir: str | Path | None = None,
    sweep: dict[str, Any] | None = None,
    **settings: Any,
) -> Run:
    """Start fine-tuning in the background and return the Run; `run.wait()` blocks until it ends.

    With launch='process' or 'accelerate' the run trains in worker processes and the Run returned
    follows it from the run store. `sweep` ({name, knobs}) is recorded in run.json when the run is
    part of a sweep (experiments/sweep.py)."""
    config = (config or RunConfig()).replace(**settings)
    tracking.check(config)
    store = RunStore(runs_dir)
    shared = session()
    in_kernel = config.launch == "kernel"
    machine = detect(config)  # once: what the run is planned, loaded and trained for
    if in_kernel:
        manager().ensure_idle()
        shared.ensure_base(config, machine)
        tokenizer, model, resolved = shared.tokenizer, shared.base_model, shared.resolved
    else:  # the workers load the weights: here the tokenizer and the model's shape are enough
        tokenizer, model = load_tokenizer(config), memory.meta_model(config)
        resolved = resolve_model(config.model)
    prepared = prepare(config, tokenizer)
    targets = resolve_targets(config, model)
    check_rank(config, model, targets)
    heads = [t for t in targets if t.rsplit(".", 1)[-1] in OUTPUT_HEADS]
    if heads:
        raise ConfigError(
            f"an adapter on the output head ({', '.join(heads)}) cannot be trained: TRL's SFTTrainer computes "
            "the loss from the head's weight directly and refuses it. Train without include_lm_head (or "
            "leave the head out of targets); %lora plan still counts its parameters"
        )
    name = config.name or _free_name(store, config)
    if store.exists(name) or name in shared.adapters:
        raise RunError(f"a run or adapter named {name!r} already exists; choose another name")
    config = config.replace(name=name)
    record = run_record.new(
        name,
        config,
        resolved_model=resolved,
        **_hardware(config, machine),
        data_fingerprint=prepared.fingerprint,
        cleaning=prepared.cleaning,
        examples={"train": len(prepared.train_records), "eval": len(prepared.eval_records)},
        sweep=sweep,
        base_fingerprint=base_fingerprint(resolved),
        targets=targets,
        plan=memory.record(config, machine),  # the estimate, to compare with the run's peak memory
    )
    store.create(name, record, data={"train": prepared.train_records, "eval": prepared.eval_records})
    if not in_kernel:
        try:
            manager().last = launch(store, name, config)
        except BaseException:
            store.remove(name)
            raise
        return manager().last
    training = Training(Run(name, config, store), prepared, machine)
    try:
        training.set_status(RUNNING)  # the first event, so every view sees the run from its start
        shared.add_training_adapter(name, config, targets)
        return manager().start(training, resume_from=None)
    except BaseException as error:  # nothing trained yet: leave no half-started run behind
        if name in shared.adapters and shared.holder is None:
            shared.delete_adapter(name)
        store.remove(name)
        full = no_space(error, store.root)
        if full:
            raise full from error
        raise


def resume(
    name: str,
    config: RunConfig | None = None,
    *,
    runs_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> Run:
    """Continue run `name` in this kernel from its last complete checkpoint, e.g. after a kernel
    restart or a worker process that died.

    A different config (when given) or a changed base model is refused before anything loads, and
    so is a run trained with trust_remote_code unless `trust_remote_code=True` allows it here.
    """
    store = RunStore(runs_dir)
    record = store.read(name)
    stored = config_to_load(record, trust_remote_code)
    manager().ensure_idle()
    if record["status"] in ACTIVE and record.get("pid") == os.getpid() and record.get("host") == HOST:
        record["status"] = INTERRUPTED  # this kernel trains nothing: its end could not be recorded
    if record["status"] not in RESUMABLE:
        raise RunError(
            f"run {name!r} is {record['status']}; only a stopped, failed or interrupted run can be resumed"
        )
    checkpoint = store.last_checkpoint(name)
    if checkpoint is None:
        raise RunError(
            f"run {name!r} has no complete checkpoint to resume from (set save_every to keep checkpoints)"
        )
    tracking.check(stored)
    if config is not None:
        changed = changed_settings(record["config"], config.replace(name=name))
        if changed:
            raise RunError(
                f"cannot resume {name!r} with a different config ({'; '.join(changed)}); "
                "start a new run to train with other settings"
            )
    store.clear_requests(name)
    return _train_from_folder(store, record, checkpoint, trust_remote_code=trust_remote_code)


def train_folder(store: RunStore, name: str, writes: bool = True, trust_remote_code: bool = False) -> Run:
    """Train run `name` from its folder alone (a worker process's job), from its last complete
    checkpoint when it has one. `writes`: whether this process writes the run's files (under
    Accelerate the first process alone does). `trust_remote_code`: allowed by whoever started
    the worker (the user's own call that launched it), never by the folder."""
    record = store.read(name)
    if record["status"] not in (RUNNING, *RESUMABLE):
        raise RunError(f"run {name!r} is {record['status']}; there is nothing left to train")
    tracking.check(config_to_load(record, trust_remote_code))
    return _train_from_folder(store, record, store.last_checkpoint(name), writes, trust_remote_code)


def _train_from_folder(
    store: RunStore,
    record: dict[str, Any],
    checkpoint: Path | None,
    writes: bool = True,
    trust_remote_code: bool = False,
) -> Run:
    """Start training a stored run on the records saved in its folder."""
    name, folder = record["name"], store.path(record["name"])
    stored = config_to_load(record, trust_remote_code).replace(
        data=str(folder / "data" / "train.jsonl"),
        eval_data=str(folder / "data" / "eval.jsonl"),
        eval_fraction=0.0,
        max_examples=None,
    )
    _check_base(record, stored)
    machine = detect(stored)
    shared = session()
    shared.ensure_base(stored, machine)
    prepared = prepare(stored, shared.tokenizer)
    if prepared.fingerprint != record["data_fingerprint"]:
        raise RunError(f"cannot train {name!r}: its saved data under {folder / 'data'} was modified")
    run = Run(name, stored, store)
    run.history = History(store.events(name)[0])
    run.total_steps = record.get("total_steps") or 0
    run.step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
    training = Training(run, prepared, machine, writes)
    try:
        training.update(**_hardware(stored, machine))  # this process trains it: its hardware is recorded
        # the steps after the checkpoint are trained again: their old events are superseded
        retrained = checkpoint is not None or any(e.get("type") != STATUS for e in run.events)
        training.set_status(RUNNING, **({"resumed_from": run.step} if retrained else {}))
        if name in shared.adapters:
            shared.delete_adapter(name)
        shared.add_training_adapter(name, stored, record["targets"])
        return manager().start(training, resume_from=checkpoint)
    except BaseException as error:
        reason = str(no_space(error, store.root) or f"{type(error).__name__}: {error}")
        training.end(FAILED, error=reason, finished=time.time())
        raise


def _check_base(record: dict[str, Any], config: RunConfig) -> None:
    """Refuse to train a stored run on a base other than the one it started on."""
    name, recorded = record["name"], record.get("base_fingerprint")
    if not isinstance(recorded, str):
        raise RunError(
            f"run {name!r} cannot go on: its run.json has no fingerprint of its base model, so nothing "
            "shows that the base is still the one it trained on; start a new run"
        )
    if not same_base(recorded, resolve_model(config.model)):
        raise RunError(
            f"run {name!r} cannot go on: the base model {config.model!r} changed since the run started"
        )


def _hardware(config: RunConfig, machine: Machine) -> dict[str, Any]:
    """What run.json records of the machine a run trains on and the choices made there."""
    return {
        "device": "cuda" if machine.gpu else "cpu",
        "machine": dataclasses.asdict(machine),
        "hardware": dataclasses.asdict(Hardware.of(config, machine)),
    }


def _free_name(store: RunStore, config: RunConfig) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(config.model).name) + time.strftime("-%Y%m%d-%H%M%S")
    name, n = stem, 1
    while store.exists(name) or (store.root / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name
