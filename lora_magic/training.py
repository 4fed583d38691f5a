"""Training: a kernel-wide manager runs one fine-tuning at a time in a worker thread.

`train()` does everything that can fail on user input first, in the caller's thread (settings,
data, model, target layers), so mistakes are immediate and leave nothing in the run store. Only
then is the run folder created and TRL's SFTTrainer started in the worker thread. The worker
publishes events to subscribers (widgets, the magics) and to the run store (other processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import logging
import math
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback

from . import models, planning, recipe, tracking
from .adapter_card import adapter_card
from .config import RunConfig
from .data import Prepared, load_tokenizer, prepare, prompt_for
from .errors import ConfigError, RunError
from .events import (
    ACTIVE,
    COMPLETED,
    EVALUATION,
    FAILED,
    INTERRUPTED,
    PAUSED,
    RESUMABLE,
    RUNNING,
    STATUS,
    STOPPED,
    current,
)
from .generation import generate_text, session
from .results import loss_before_training
from .runs import COMPLETE_MARK, RunStore, no_space, stored_config

log = logging.getLogger(__name__)
Event = dict[str, Any]
VERSIONED = ("lora_magic", "torch", "transformers", "peft", "trl", "bitsandbytes")
HOST = socket.gethostname()
DIVERGENCE_RISE = 1.4  # an eval loss this many times its best so far means the run is diverging


@dataclass
class BestWeights:
    """The adapter's weights at its lowest eval loss so far: what a rollback restores."""

    step: int
    eval_loss: float
    state: dict[str, torch.Tensor]


class Run:
    """A fine-tuning run in this kernel: its progress, events and controls."""

    stops_on_interrupt = True  # a kernel interrupt while it is watched stops it gracefully

    def __init__(self, name: str, config: RunConfig, store: RunStore):
        self.name, self.config, self.store = name, config, store
        self.path = store.path(name)
        self.status = RUNNING
        self.step, self.total_steps = 0, 0
        self.events: list[Event] = []
        self.metrics: dict[str, float] = {}
        self.error: str | None = None
        self.trainable_params = self.total_params = 0
        self.warning: str | None = None  # set when the run diverges or its loss is NaN/inf
        self.best: BestWeights | None = None
        self._rollback_wanted = False
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._done = threading.Event()
        self._subscribers: list[Callable[[Event], None]] = []

    # -- observing -----------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` from the worker thread for each new event; returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: Event) -> None:
        event = {"time": time.time(), **event}
        self.events.append(event)
        self.store.append_event(self.name, event)
        self._notify(event)

    def _notify(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken view must not kill the training
                log.exception("a subscriber of run %s failed", self.name)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files: the other processes of a multi-process
        run train from a store they only read (worker.py) and leave the adapter to the first."""
        return self.store.writable

    @property
    def adapter_path(self) -> Path | None:
        adapter = self.path / "adapter"
        return adapter if (adapter / "adapter_config.json").is_file() else None

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["loss"]) for e in self.events if e["type"] == "log"]

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["eval_loss"]) for e in self.events if e["type"] == "eval"]

    # -- controlling ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop after the current step; the adapter and a resumable checkpoint are saved."""
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        """Hold training after the current step, keeping the optimizer state, until resume()."""
        if self.done:
            raise RunError(f"run {self.name!r} is {self.status}; only a running run can be paused")
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def rollback(self) -> None:
        """Put the adapter back to its weights at the lowest eval loss. A running run stops first
        (after the current step) and saves the rolled-back adapter."""
        if self.best is None:
            raise RunError(
                f"run {self.name!r} has no evaluation yet, so there are no best weights to roll back to"
            )
        if not self.done:
            self._rollback_wanted = True
            self.stop()
            return
        session().refuse_while_leased("roll back an adapter")
        if self.name not in session().adapters:
            raise RunError(
                f"run {self.name!r}'s adapter is no longer loaded in this session, so its best weights "
                "are gone with it; roll back before %lora free or loading another base"
            )
        self._restore_best()
        session().save_adapter(self.name, self.path / "adapter")
        self.store.update(self.name, metrics=self.metrics)

    def _restore_best(self) -> None:
        from peft import set_peft_model_state_dict

        best = self.best
        set_peft_model_state_dict(session().model, best.state, adapter_name=self.name)
        self.metrics.update(eval_loss=best.eval_loss, rolled_back_to_step=best.step)
        self.publish({"type": "rollback", "step": best.step, "eval_loss": best.eval_loss})

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends. Ctrl-C / kernel interrupt stops it gracefully instead."""
        wait_or_stop(self._done, self.stop, timeout)
        return self

    def __repr__(self) -> str:
        progress = f"step {self.step}/{self.total_steps}" if self.total_steps else "starting"
        loss = f", loss {self.losses[-1][1]:.4f}" if self.losses else ""
        return f"<Run {self.name!r}: {self.status}, {progress}{loss}, {self.path}>"

    # -- worker side ---------------------------------------------------------------------------
    def _paused(self) -> bool:
        return not self._running.is_set() or self.store.pause_requested(self.name)

    def _wait_while_paused(self) -> None:
        if not self._paused():
            return
        self._set_status(PAUSED)
        while self._paused() and not self._stop_wanted():
            time.sleep(0.2)
        self._set_status(RUNNING)

    def _stop_wanted(self) -> bool:
        return self._stop.is_set() or self.store.stop_requested(self.name)

    def _warn(self, kind: str, step: int, message: str) -> None:
        """Say once per kind, in the events, run.json and every view, that the run is going wrong."""
        if any(e["type"] == "warning" and e["kind"] == kind for e in self.events):
            return
        self.warning = message
        self.store.update(self.name, warning=message)
        self.publish({"type": "warning", "kind": kind, "step": step, "message": message})

    def _set_status(self, status: str, **fields: Any) -> None:
        self.status = status
        # the event first: a reader that sees the run ended in run.json has its last event too
        self.publish({"type": STATUS, "status": status, "step": self.step, **fields})
        self.store.update(self.name, status=status, step=self.step, total_steps=self.total_steps, **fields)

    def _end(self, status: str, **fields: Any) -> None:
        """Record how the run ended. When even that cannot be written (a full disk), the run still
        ends, here as failed with the reason; other processes see its run.json as interrupted
        once this process is gone."""
        try:
            self._set_status(status, **fields)
        except Exception as error:
            log.exception("run %s: its end could not be recorded", self.name)
            reason = no_space(error, self.store.root) or f"{type(error).__name__}: {error}"
            written = f"the run store could not record that it {status}: {reason}"
            self.status, self.error = FAILED, f"{self.error}; {written}" if self.error else written
            event = {
                "time": time.time(),
                "type": STATUS,
                "status": FAILED,
                "step": self.step,
                "error": self.error,
            }
            self.events.append(event)
            self._notify(event)


def wait_or_stop(done: threading.Event, stop: Callable[[], None], timeout: float | None) -> None:
    """Wait for `done`; a Ctrl-C / kernel interrupt calls `stop` and waits for the graceful end."""
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        stop()
        done.wait()


class TrainingManager:
    """One per kernel: owns the worker thread, refuses a second concurrent run."""

    def __init__(self) -> None:
        self.active: Run | None = None
        self.last: Run | None = None
        self._lock = threading.Lock()

    def ensure_idle(self) -> None:
        if self.active and not self.active.done:
            raise RunError(
                f"run {self.active.name!r} is still {self.active.status}; stop it (run.stop() or %lora stop) "
                "or wait for it before starting another"
            )

    def start(self, run: Run, work: Callable[[], None]) -> Run:
        """Run `work` in a worker thread, with the session's model leased to it until it ends."""
        with self._lock:
            self.ensure_idle()
            session().take(_lease(run))
            self.active = self.last = run
        threading.Thread(target=work, name=f"lora-train-{run.name}", daemon=True).start()
        return run


def _lease(run: Run) -> str:
    return f"run {run.name!r} is training"


_manager = TrainingManager()


def manager() -> TrainingManager:
    return _manager


# -- starting runs -----------------------------------------------------------------------------------
def train(
    config: RunConfig | None = None,
    /,
    *,
    runs_dir: str | Path | None = None,
    sweep: dict[str, Any] | None = None,
    **settings: Any,
) -> Run:
    """Start fine-tuning in the background and return the Run; `run.wait()` blocks until it ends.

    With launch='process' or 'accelerate' the run trains in worker processes (worker.py) and the
    Run returned follows it from the run store. `sweep` ({name, knobs}) is recorded in run.json
    when the run is part of a sweep (sweeps.py)."""
    config = (config or RunConfig()).replace(**settings)
    tracking.check(config)
    store = RunStore(runs_dir)
    shared = session()
    in_kernel = config.launch == "kernel"
    if in_kernel:
        _manager.ensure_idle()
        shared.ensure_base(config)
        tokenizer, model, resolved = shared.tokenizer, shared.base_model, shared.resolved
    else:  # the workers load the weights: here the tokenizer and the model's shape are enough
        tokenizer, model = load_tokenizer(config), planning.meta_model(config)
        resolved = models.resolve_model(config.model)
    prepared = prepare(config, tokenizer)
    targets = models.resolve_targets(config, model)
    heads = [t for t in targets if t.rsplit(".", 1)[-1] in models.OUTPUT_HEADS]
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
    record = {
        "name": name,
        "status": RUNNING,
        "created": time.time(),
        "config": config.to_dict(),
        "model": config.model,
        "resolved_model": resolved,
        "quantization": config.quantization,
        "device": models.device(config.device),
        "target": dataclasses.asdict(recipe.this_machine(config)),
        "versions": _versions(),
        "data_fingerprint": prepared.fingerprint,
        "cleaning": prepared.cleaning,
        "examples": {"train": len(prepared.train_records), "eval": len(prepared.eval_records)},
        "sweep": sweep,
        "base_fingerprint": models.base_fingerprint(resolved),
        "targets": targets,
        "plan": planning.record(config),  # the estimate, to compare with the run's peak memory
        "step": 0,
        "total_steps": 0,
        "metrics": {},
        "error": None,
    }
    store.create(name, record, data={"train": prepared.train_records, "eval": prepared.eval_records})
    if not in_kernel:
        from .detached import launch

        try:
            _manager.last = launch(store, name, config)
        except BaseException:
            store.remove(name)
            raise
        return _manager.last
    run = Run(name, config, store)
    try:
        run._set_status(RUNNING)  # the first event, so every view sees the run from its start
        shared.add_training_adapter(name, config, targets)
        return _manager.start(run, lambda: _work(run, prepared, resume_from=None))
    except BaseException as error:  # nothing trained yet: leave no half-started run behind
        if name in shared.adapters and shared.holder is None:
            shared.delete_adapter(name)
        store.remove(name)
        full = no_space(error, store.root)
        if full:
            raise full from error
        raise


def resume(name: str, config: RunConfig | None = None, *, runs_dir: str | Path | None = None) -> Run:
    """Continue run `name` in this kernel from its last complete checkpoint, e.g. after a kernel
    restart or a worker process that died.

    A different config (when given) or a changed base model is refused before anything loads.
    """
    store = RunStore(runs_dir)
    record = store.read(name)
    _manager.ensure_idle()
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
    stored = stored_config(record)
    tracking.check(stored)
    if config is not None:
        changed = [
            key
            for key, value in config.replace(name=name).to_dict().items()
            if key not in ("data", "eval_data") and record["config"].get(key) != value
        ]
        if changed:
            raise RunError(
                f"cannot resume {name!r} with a different config: {', '.join(changed)} changed; "
                "start a new run to train with other settings"
            )
    resolved = models.resolve_model(stored.model)
    if models.base_fingerprint(resolved) != record["base_fingerprint"]:
        raise RunError(
            f"cannot resume {name!r}: the base model {stored.model!r} changed since the run started"
        )
    store.clear_requests(name)
    return _train_from_folder(store, record, checkpoint)


def train_folder(store: RunStore, name: str) -> Run:
    """Train run `name` from its folder alone (the worker's job), from its last complete
    checkpoint when it has one."""
    record = store.read(name)
    if record["status"] not in (RUNNING, *RESUMABLE):
        raise RunError(f"run {name!r} is {record['status']}; there is nothing left to train")
    tracking.check(stored_config(record))
    return _train_from_folder(store, record, store.last_checkpoint(name))


def _train_from_folder(store: RunStore, record: dict[str, Any], checkpoint: Path | None) -> Run:
    """Start training a stored run on the records saved in its folder."""
    name, folder = record["name"], store.path(record["name"])
    stored = stored_config(record).replace(
        data=str(folder / "data" / "train.jsonl"),
        eval_data=str(folder / "data" / "eval.jsonl"),
        eval_fraction=0.0,
        max_examples=None,
    )
    shared = session()
    shared.ensure_base(stored)
    prepared = prepare(stored, shared.tokenizer)
    if prepared.fingerprint != record["data_fingerprint"]:
        raise RunError(f"cannot train {name!r}: its saved data under {folder / 'data'} was modified")
    run = Run(name, stored, store)
    run.events = store.events(name)[0]
    run.total_steps = record.get("total_steps") or 0
    run.step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
    try:
        # the steps after the checkpoint are trained again: their old events are superseded
        retrained = checkpoint is not None or any(e.get("type") != STATUS for e in run.events)
        run._set_status(RUNNING, **({"resumed_from": run.step} if retrained else {}))
        run.events = current(run.events)
        if name in shared.adapters:
            shared.delete_adapter(name)
        shared.add_training_adapter(name, stored, record["targets"])
        return _manager.start(run, lambda: _work(run, prepared, resume_from=checkpoint))
    except BaseException as error:
        run.error = str(no_space(error, store.root) or f"{type(error).__name__}: {error}")
        run._end(FAILED, error=run.error, finished=time.time())
        raise


def _free_name(store: RunStore, config: RunConfig) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(config.model).name) + time.strftime("-%Y%m%d-%H%M%S")
    name, n = stem, 1
    while store.exists(name) or (store.root / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def _versions() -> dict[str, str]:
    found = {}
    for package in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


# -- the worker --------------------------------------------------------------------------------------
def _work(run: Run, prepared: Prepared, resume_from: Path | None) -> None:
    shared = session()
    try:
        _reset_peak_memory()
        trainer = _build_trainer(run, shared.model, shared.tokenizer, prepared)
        run.trainable_params, run.total_params = shared.model.get_nb_trainable_parameters()
        run.store.update(
            run.name,
            trainable_params=run.trainable_params,
            total_params=run.total_params,
            started=time.time(),
        )
        # The trainer starts with a full garbage collection (accelerate's free_memory), which visits
        # every object the kernel holds: the objects that exist now are set aside until training
        # begins (RunCallback.on_train_begin unfreezes them).
        gc.freeze()
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            gc.unfreeze()
        run.metrics = {"train_loss": result.training_loss, "steps": run.step}
        if run.eval_losses:
            run.metrics["eval_step"], run.metrics["eval_loss"] = run.eval_losses[-1]
            if (before := loss_before_training(run.eval_losses)) is not None:
                run.metrics["first_eval_loss"] = before
            run.metrics["best_eval_loss"], run.metrics["best_step"] = run.best.eval_loss, run.best.step
        if run._rollback_wanted:
            run._restore_best()
        stopped = run._stop_wanted() and run.step < run.total_steps
        if run.config.evaluate and not stopped and run.main:
            _evaluate(run, prepared)
        if run.main:
            card = adapter_card(run.store.read(run.name), run.metrics)
            shared.save_adapter(run.name, run.path / "adapter", card=card)
        run._end(
            STOPPED if stopped else COMPLETED,
            metrics=run.metrics,
            finished=time.time(),
            adapter_path=str(run.path / "adapter"),
        )
    except torch.OutOfMemoryError:
        run.error = (
            f"out of memory at step {run.step}: lower batch_size or max_length, or use quantization='4bit'"
            + (
                "; resume from the last checkpoint with lora_magic.resume"
                if run.store.last_checkpoint(run.name)
                else ""
            )
        )
        run._end(FAILED, error=run.error, finished=time.time())
    except Exception as error:
        log.exception("run %s failed", run.name)
        run.error = str(no_space(error, run.store.root) or f"{type(error).__name__}: {error}")
        run._end(FAILED, error=run.error, finished=time.time())
    finally:
        if run.main:
            tracking.finish(run)  # also of a failed run, which its tracker then shows as failed
            with contextlib.suppress(OSError):
                run.store.clear_requests(run.name)
        trainer = None  # with its optimizer state, so that the memory can go back
        if run.status == FAILED:  # the error's frames hold the step's tensors: collect them now
            _release_memory()
        shared.release(_lease(run))
        run._done.set()


def _evaluate(run: Run, prepared: Prepared) -> None:
    """Score the base and the new adapter on the run's eval split (what %lora eval does); the
    adapter's scores join the run's metrics."""
    from . import evaluation

    if not prepared.eval_records:
        run._warn("no-evaluation", run.step, "evaluate is on, but the run has no eval split to score")
        return
    examples = evaluation.examples_for(prepared.eval_records, run.config, session().tokenizer, None)
    run.publish({"type": EVALUATION, "step": run.step, "rows": len(examples)})
    tokens = evaluation.answer_budget(examples, session().tokenizer)
    scored = evaluation.score([run.name], examples, run.config, tokens)
    result = evaluation.Evaluation.of("the run's eval split", tokens, examples, scored)
    evaluation.save(run.store, run.name, result, list(scored))
    run.metrics.update({k: v for k, v in scored[run.name][0].items() if k != "eval_loss"})
    run.publish({"type": EVALUATION, "step": run.step, "rows": len(examples), "metrics": result.metrics})


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _build_trainer(run: Run, model: Any, tokenizer: Any, prepared: Prepared) -> Any:
    import datasets
    from trl import SFTConfig

    from .sft import EvaluateAtTheEnd, LabelledLogitsSFTTrainer

    datasets.disable_progress_bars()
    args = recipe.trainer_arguments(
        run.config,
        recipe.this_machine(run.config),
        output_dir=str(run.path / "checkpoints"),
        train_examples=len(prepared.train),
        eval_examples=len(prepared.eval),
    )
    sample = recipe.eval_sample(run.config, len(prepared.eval))
    scored = prepared.eval if sample is None else [prepared.eval[i] for i in sample]
    trainer = LabelledLogitsSFTTrainer(
        model=model,
        args=SFTConfig(**args),
        train_dataset=datasets.Dataset.from_list(prepared.train),
        eval_dataset=datasets.Dataset.from_list(scored) if scored else None,
        processing_class=tokenizer,
        callbacks=[RunCallback(run), EvaluateAtTheEnd(), *(tracking.callbacks(run) if run.main else [])],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through run events, not stdout
    return trainer


class RunCallback(TrainerCallback):
    """Turns the trainer's hooks into run events and obeys stop, pause and probe timing."""

    def __init__(self, run: Run):
        self.run = run
        self.started = time.time()
        self.last_time, self.last_tokens = self.started, 0
        self.base_answers: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        gc.unfreeze()  # frozen by _work for the trainer's start
        run = self.run
        run.total_steps = state.max_steps
        self.first_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen
        run.store.update(run.name, total_steps=run.total_steps)
        self._probe(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        run.step = state.global_step
        config = run.config
        every = config.probe_every or max(1, run.total_steps // 4)
        if config.probes and (run.step % every == 0 or run.step == run.total_steps):
            self._probe(run.step)
        run._wait_while_paused()
        if _on_every_rank(run._stop_wanted()) and run.step < run.total_steps:
            control.should_training_stop = True
            control.should_save = True  # so a stopped run can be resumed
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        run, now = self.run, time.time()
        tokens = state.num_input_tokens_seen
        done = max(1, state.global_step - self.first_step)
        event = {
            "type": "log",
            "step": state.global_step,
            "total_steps": run.total_steps,
            "epoch": state.epoch,
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": (tokens - self.last_tokens) / max(now - self.last_time, 1e-9),
            "elapsed": now - self.started,
            "eta": (now - self.started) / done * (run.total_steps - state.global_step),
            "peak_memory_mb": _peak_memory_mb(),
        }
        broken = [k for k in ("loss", "grad_norm") if event[k] is not None and not math.isfinite(event[k])]
        self.last_time, self.last_tokens = now, tokens
        run.step = state.global_step
        run.publish(event)
        run.store.update(
            run.name, step=run.step, total_steps=run.total_steps, loss=event["loss"], eta=event["eta"]
        )
        if broken:
            what = " and ".join(f"the {k.replace('_', ' ')} is {event[k]}" for k in broken)
            run._warn(
                "not-finite",
                state.global_step,
                f"training broke down at step {state.global_step}: {what}. {_advice(run)}",
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        run, step, loss = self.run, state.global_step, metrics["eval_loss"]
        run.publish({"type": "eval", "step": step, "eval_loss": loss})
        best = run.best
        if math.isfinite(loss) and (best is None or loss < best.eval_loss):
            run.best = BestWeights(step, loss, _adapter_weights(run.name))
        elif not math.isfinite(loss):
            run._warn(
                "not-finite",
                step,
                f"training broke down at step {step}: the eval loss is {loss}. {_advice(run)}",
            )
        elif loss > DIVERGENCE_RISE * best.eval_loss:
            rise = loss / best.eval_loss - 1
            run._warn(
                "diverging",
                step,
                f"diverging: eval loss {loss:.4f} at step {step} is {rise:.0%} above its best "
                f"({best.eval_loss:.4f} at step {best.step}). {_advice(run)}",
            )

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            (folder / COMPLETE_MARK).write_text(str(time.time()))
            self.run.publish({"type": "checkpoint", "step": state.global_step, "path": str(folder)})

    def _probe(self, step: int) -> None:
        """Answer each probe prompt with the base (adapter disabled) and the adapter being trained."""
        run = self.run
        if not run.config.probes or not run.main:
            return
        shared = session()
        model, tokenizer = shared.model, shared.tokenizer
        was_training = model.training
        model.eval()
        try:
            for prompt in run.config.probes:
                text = prompt_for(prompt, run.config, tokenizer)
                if prompt not in self.base_answers:
                    with model.disable_adapter():
                        self.base_answers[prompt] = generate_text(
                            model, tokenizer, text, run.config.probe_tokens
                        )[0]
                answer = generate_text(model, tokenizer, text, run.config.probe_tokens)[0]
                run.publish(
                    {
                        "type": "probe",
                        "step": step,
                        "prompt": prompt,
                        "base": self.base_answers[prompt],
                        "adapter": answer,
                    }
                )
        finally:
            model.train(was_training)


def _on_every_rank(stop: bool) -> bool:
    """Whether any process of the run wants to stop: all processes stop at the same step, or the
    others would wait for it forever. One process decides alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stop
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    wanted = torch.tensor([int(stop)], device=on)
    dist.all_reduce(wanted, op=dist.ReduceOp.MAX)
    return bool(wanted.item())


def _advice(run: Run) -> str:
    """The likely cause of a diverging run and what to do about it."""
    config = run.config
    fixes = [f"lower learning_rate (now {config.learning_rate:g}; try {config.learning_rate / 4:g})"]
    if config.warmup_steps == 0:
        fixes.append("add warm-up (warmup_steps about a tenth of the steps)")
    cause = "a learning rate too high for this base"
    if config.quantization == "4bit":
        cause += " (a 4-bit base is noisier and wants a lower rate)"
    roll = ""
    if run.best is not None:
        roll = f" or roll back to the weights of step {run.best.step}: run.rollback() or %lora rollback {run.name}"
    return f"Likely cause: {cause}. To fix: {' and '.join(fixes)}. Stop the run{roll}."


def _adapter_weights(name: str) -> dict[str, torch.Tensor]:
    """A copy of adapter `name`'s weights, as PEFT saves them."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(session().model, adapter_name=name)
    return {key: value.detach().clone() for key, value in state.items()}


def _reset_peak_memory() -> None:
    """Start measuring a run's peak memory afresh, so that each run of a kernel reports its own."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak resident set size
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError, StopIteration):  # Linux: VmHWM, the peak since the last reset
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
