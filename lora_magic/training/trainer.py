"""Training in this process: a kernel-wide manager runs one fine-tuning at a time in a worker
thread, on the session's shared base model.

A `Training` is the trainer of one run: it publishes the run's events (to the run store and to
its `Run` handle), obeys stop, pause and rollback, and keeps the adapter's best weights. The
library's trainer is built by the run's method (METHODS); `RunCallback` turns its hooks into
events. The same code trains a run in a worker process (worker.py); there, under Accelerate, every
process trains and only the first writes the run's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..core.config import Sampling
from ..core.errors import RunError
from ..core.events import (
    CHECKPOINT,
    COMPLETED,
    EVAL,
    EVALUATION,
    FAILED,
    LOG,
    PAUSED,
    PROBE,
    ROLLBACK,
    RUNNING,
    STATUS,
    STOPPED,
    WARNING,
    CheckpointEvent,
    EvalEvent,
    LogEvent,
    ProbeEvent,
)
from ..core.hardware import Machine
from ..core.results import MovingAverage, loss_before_training
from ..core.store import COMPLETE_MARK, no_space, write_text_atomic
from ..data.prepare import Prepared
from ..data.templates import prompt_for
from ..model import scoring
from ..model.answering import Question, answer_all
from ..model.session import BASE, session
from . import sft, tracking
from .card import adapter_card
from .run import Run

log = logging.getLogger(__name__)
DIVERGENCE_RISE = 1.4  # a loss this many times its lowest so far means the run is diverging
# The training loss is judged smoothed (as the plot draws it), once this many steps are logged, and
# a rise must also be this many nats: a low loss wanders by more than 40 % without going wrong.
SMOOTHED_STEPS, SMOOTHED_MARGIN = 5, 0.5
# The training methods, by the name the `method` setting gives (config.METHODS): each module builds
# the library's trainer for a run.
METHODS = {"sft": sft}


@dataclass
class BestWeights:
    """The adapter's weights at its lowest eval loss so far: what a rollback restores."""

    step: int
    eval_loss: float
    state: dict[str, torch.Tensor]


class Training:
    """The trainer of one run in this process."""

    def __init__(self, run: Run, prepared: Prepared, machine: Machine, writes: bool = True):
        self.run, self.prepared, self.machine = run, prepared, machine
        self.writes = writes  # False for the other processes of a multi-process run
        self.best: BestWeights | None = None
        self.rollback_wanted = False
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        run.trainer = self

    # -- the run's events ------------------------------------------------------------------------
    def publish(self, event: dict[str, Any], **record_changes: Any) -> None:
        """Write the event, then `record_changes` into run.json, and only then show it in the views:
        a reader that sees the run ended in run.json has its last event too, and a view that says
        the run ended is never ahead of run.json."""
        event = {"time": time.time(), **event}
        if self.writes:
            self.run.store.append_event(self.run.name, event)
        if record_changes:
            self.update(**record_changes)
        self.run.receive(event)

    def update(self, **changes: Any) -> None:
        """Write changes into run.json (the first process of a run alone writes)."""
        if self.writes:
            self.run.store.update(self.run.name, **changes)

    def set_status(self, status: str, **fields: Any) -> None:
        run = self.run
        self.publish(
            {"type": STATUS, "status": status, "step": run.step, **fields},
            status=status,
            step=run.step,
            total_steps=run.total_steps,
            **fields,
        )

    def end(self, status: str, **fields: Any) -> None:
        """Record how the run ended. When even that cannot be written (a full disk), the run still
        ends, here as failed with the reason; other processes see its run.json as interrupted
        once this process is gone."""
        run = self.run
        try:
            self.set_status(status, **fields)
        except Exception as error:
            log.exception("run %s: its end could not be recorded", run.name)
            reason = no_space(error, run.store.root) or f"{type(error).__name__}: {error}"
            written = f"the run store could not record that it {status}: {reason}"
            earlier = fields.get("error") or run.error
            error_text = f"{earlier}; {written}" if earlier else written
            run.receive(
                {"time": time.time(), "type": STATUS, "status": FAILED, "step": run.step, "error": error_text}
            )

    def warn(self, kind: str, step: int, message: str) -> None:
        """Say once per kind, in the events, run.json and every view, that the run is going wrong."""
        if any(e["kind"] == kind for e in self.run.history.of(WARNING)):
            return
        self.update(warning=message)
        self.publish({"type": WARNING, "kind": kind, "step": step, "message": message})

    # -- controls --------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def rollback(self) -> None:
        run = self.run
        if self.best is None:
            raise RunError(
                f"run {run.name!r} has no evaluation yet, so there are no best weights to roll back to"
            )
        if not run.done:
            self.rollback_wanted = True
            self.stop()
            return
        if run.config.changes_base:
            raise RunError(
                f"run {run.name!r} trained with init={run.config.init!r} on a changed base, given back when "
                "it ended: its best weights fit that base only, so roll back while it trains "
                "(run.rollback() or %lora rollback stop it and save them)"
            )
        shared = session()
        shared.refuse_while_leased("roll back an adapter")
        if run.name not in shared.adapters:
            raise RunError(
                f"run {run.name!r}'s adapter is no longer loaded in this session, so its best weights "
                "are gone with it; roll back before %lora free or loading another base"
            )
        self.restore_best()
        shared.save_adapter(run.name, run.path / "adapter")
        self.update(metrics=run.metrics)

    def restore_best(self) -> None:
        from peft import set_peft_model_state_dict

        best = self.best
        set_peft_model_state_dict(session().model, best.state, adapter_name=self.run.name)
        self.run.metrics.update(eval_loss=best.eval_loss, rolled_back_to_step=best.step)
        self.publish({"type": ROLLBACK, "step": best.step, "eval_loss": best.eval_loss})

    def stop_wanted(self) -> bool:
        return self._stop.is_set() or self.run.store.stop_requested(self.run.name)

    def paused(self) -> bool:
        return not self._running.is_set() or self.run.store.pause_requested(self.run.name)

    def wait_while_paused(self) -> None:
        if not self.paused():
            return
        self.set_status(PAUSED)
        while self.paused() and not self.stop_wanted():
            time.sleep(0.2)
        self.set_status(RUNNING)

    # -- the work --------------------------------------------------------------------------------
    def work(self, resume_from: Path | None) -> None:
        """Train the run to its end (the body of the worker thread)."""
        run, shared = self.run, session()
        trainer = None
        try:
            _reset_peak_memory()
            callbacks = [
                RunCallback(self),
                sft.EvaluateAtTheEnd(),
                *(tracking.callbacks(run) if self.writes else []),
            ]
            trainer = METHODS[run.config.method].build_trainer(
                run, shared.model, shared.tokenizer, self.prepared, self.machine, callbacks
            )
            run.trainable_params, run.total_params = shared.model.get_nb_trainable_parameters()
            self.update(
                trainable_params=run.trainable_params, total_params=run.total_params, started=time.time()
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
            evals = run.eval_losses
            if evals:
                run.metrics["eval_step"], run.metrics["eval_loss"] = evals[-1]
                if (before := loss_before_training(evals)) is not None:
                    run.metrics["first_eval_loss"] = before
                run.metrics["best_eval_loss"], run.metrics["best_step"] = self.best.eval_loss, self.best.step
            if self.rollback_wanted:
                self.restore_best()
            stopped = self.stop_wanted() and run.step < run.total_steps
            if run.config.evaluate and not stopped and self.writes:
                self.evaluate()
            if self.writes:
                card = adapter_card(run.store.read(run.name), run.metrics)
                shared.save_adapter(run.name, run.path / "adapter", card=card)
            self.end(
                STOPPED if stopped else COMPLETED,
                metrics=run.metrics,
                finished=time.time(),
                adapter_path=str(run.path / "adapter"),
            )
        except torch.OutOfMemoryError:
            checkpoint = run.store.last_checkpoint(run.name)
            resume = "; resume from the last checkpoint with lora_magic.resume" if checkpoint else ""
            quantize = "" if run.config.changes_base else ", or use quantization='4bit'"
            error = f"out of memory at step {run.step}: lower batch_size or max_length{quantize}{resume}"
            self.end(FAILED, error=error, finished=time.time())
        except Exception as error:
            log.exception("run %s failed", run.name)
            reason = str(no_space(error, run.store.root) or f"{type(error).__name__}: {error}")
            self.end(FAILED, error=reason, finished=time.time())
        finally:
            if self.writes:
                tracking.finish(run)  # also of a failed run, which its tracker then shows as failed
                with contextlib.suppress(OSError):
                    run.store.clear_requests(run.name)
            trainer = None  # with its optimizer state, so that the memory can go back
            _release_memory()  # a failed step's frames hold its tensors: collected here too
            try:
                shared.settle(run.name)  # a PiSSA/OLoRA adapter gives the base its weights back
            finally:
                shared.release(lease(run))
                run.finish()

    def evaluate(self) -> None:
        """Score the base and the new adapter on the run's eval split (what %lora eval does); the
        adapter's scores join the run's metrics."""
        run, tokenizer = self.run, session().tokenizer
        if not self.prepared.eval_records:
            self.warn("no-evaluation", run.step, "evaluate is on, but the run has no eval split to score")
            return
        examples = scoring.examples_for(self.prepared.eval_records, run.config, tokenizer, None)
        self.publish({"type": EVALUATION, "step": run.step, "rows": len(examples)})
        tokens = scoring.answer_budget(examples, tokenizer)
        scored = scoring.score([run.name], examples, run.config, tokens)
        result = scoring.Evaluation.of("the run's eval split", tokens, examples, scored)
        scoring.save(run.store, run.name, result, list(scored))
        run.metrics.update({k: v for k, v in scored[run.name][0].items() if k != "eval_loss"})
        self.publish({"type": EVALUATION, "step": run.step, "rows": len(examples), "metrics": result.metrics})


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

    def start(self, training: Training, resume_from: Path | None) -> Run:
        """Train in a worker thread, with the session's model leased to it until it ends."""
        run = training.run
        with self._lock:
            self.ensure_idle()
            session().take(lease(run))
            self.active = self.last = run
        threading.Thread(
            target=training.work, args=(resume_from,), name=f"lora-train-{run.name}", daemon=True
        ).start()
        return run


def lease(run: Run) -> str:
    """The session's lease of a training run."""
    return f"run {run.name!r} is training"


_manager = TrainingManager()


def manager() -> TrainingManager:
    return _manager


def _release_memory() -> None:
    """Give a finished run's memory back. On Linux the C allocator keeps what the steps freed for
    the process (about 1.1 GB after a run of the built-in model on all linear layers at batch 4,
    benchmarks/memory_growth.py) unless asked to return it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # a libc without malloc_trim (musl)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class RunCallback(TrainerCallback):
    """Turns the trainer's hooks into run events and obeys stop, pause and probe timing."""

    def __init__(self, training: Training):
        self.training = training
        self.run = training.run
        self.started = time.time()
        self.last_time, self.last_tokens = self.started, 0
        self.base_answers: dict[str, str] = {}
        self.smoothed = Smoothed()

    def on_train_begin(self, args, state, control, **kwargs):
        gc.unfreeze()  # frozen by Training.work for the trainer's start
        run = self.run
        run.total_steps = state.max_steps
        self.first_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen
        self.training.update(total_steps=run.total_steps)
        self._probe(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        run.step = state.global_step
        config = run.config
        every = config.probe_every or max(1, run.total_steps // 4)
        if config.probes and (run.step % every == 0 or run.step == run.total_steps):
            self._probe(run.step)
        self.training.wait_while_paused()
        if _on_every_rank(self.training.stop_wanted()) and run.step < run.total_steps:
            control.should_training_stop = True
            control.should_save = True  # so a stopped run can be resumed
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        run, now = self.run, time.time()
        tokens = state.num_input_tokens_seen
        done = max(1, state.global_step - self.first_step)
        event = LogEvent(
            type=LOG,
            step=state.global_step,
            total_steps=run.total_steps,
            epoch=state.epoch,
            loss=logs["loss"],
            learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_second=(tokens - self.last_tokens) / max(now - self.last_time, 1e-9),
            elapsed=now - self.started,
            eta=(now - self.started) / done * (run.total_steps - state.global_step),
            peak_memory_mb=_peak_memory_mb(),
        )
        broken = [k for k in ("loss", "grad_norm") if event[k] is not None and not math.isfinite(event[k])]
        self.last_time, self.last_tokens = now, tokens
        self.training.publish(event)
        self.training.update(step=run.step, total_steps=run.total_steps, loss=event["loss"], eta=event["eta"])
        if not broken and self.smoothed.add(state.global_step, event["loss"]):
            (loss, step), (lowest, at) = self.smoothed.now, self.smoothed.lowest
            self.training.warn(
                "diverging",
                step,
                f"diverging: the training loss (smoothed) is {loss:.4f} at step {step}, "
                f"{loss / lowest - 1:.0%} above its lowest ({lowest:.4f} at step {at}). {_advice(self.training)}",
            )
        if broken:
            what = " and ".join(f"the {k.replace('_', ' ')} is {event[k]}" for k in broken)
            self.training.warn(
                "not-finite",
                state.global_step,
                f"training broke down at step {state.global_step}: {what}. {_advice(self.training)}",
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        training, step, loss = self.training, state.global_step, metrics["eval_loss"]
        training.publish(EvalEvent(type=EVAL, step=step, eval_loss=loss))
        best = training.best
        if math.isfinite(loss) and (best is None or loss < best.eval_loss):
            training.best = BestWeights(step, loss, _adapter_weights(self.run.name))
        elif not math.isfinite(loss):
            training.warn(
                "not-finite",
                step,
                f"training broke down at step {step}: the eval loss is {loss}. {_advice(training)}",
            )
        elif loss > DIVERGENCE_RISE * best.eval_loss:
            rise = loss / best.eval_loss - 1
            training.warn(
                "diverging",
                step,
                f"diverging: eval loss {loss:.4f} at step {step} is {rise:.0%} above its best "
                f"({best.eval_loss:.4f} at step {best.step}). {_advice(training)}",
            )

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            write_text_atomic(folder / COMPLETE_MARK, str(time.time()))
            self.training.publish(CheckpointEvent(type=CHECKPOINT, step=state.global_step, path=str(folder)))

    def _probe(self, step: int) -> None:
        """Answer the probe prompts with the adapter being trained, and the first time with the base
        (adapters off) too: all in one batched answering."""
        run = self.run
        if not run.config.probes or not self.training.writes:
            return
        probes, tokenizer = run.config.probes, session().tokenizer
        texts = {prompt: prompt_for(prompt, run.config, tokenizer) for prompt in probes}
        unseen = [p for p in probes if p not in self.base_answers]
        questions = [Question(BASE, texts[p]) for p in unseen] + [
            Question(run.name, texts[p]) for p in probes
        ]
        how = Sampling(max_new_tokens=run.config.probe_tokens)
        answers = answer_all(questions, how, stop=self.training.stop_wanted)
        if self.training.stop_wanted():
            return
        self.base_answers.update(zip(unseen, (a.text for a in answers)))
        for prompt, reply in zip(probes, answers[len(unseen) :]):
            self.training.publish(
                ProbeEvent(
                    type=PROBE, step=step, prompt=prompt, base=self.base_answers[prompt], adapter=reply.text
                )
            )


class Smoothed:
    """The training loss as the plot draws it (a debiased moving average), and its lowest point:
    the sign of a run diverging even where no evaluation comes between (a default short run)."""

    def __init__(self) -> None:
        self.average = MovingAverage()
        self.now: tuple[float, int] = (math.inf, 0)
        self.lowest: tuple[float, int] = (math.inf, 0)

    def add(self, step: int, loss: float) -> bool:
        """Take a step's loss; True when the smoothed loss has risen as a diverging run's does."""
        self.now = (self.average.add(loss), step)
        self.lowest = min(self.lowest, self.now)
        risen, lowest = self.now[0], self.lowest[0]
        return (
            self.average.count >= SMOOTHED_STEPS
            and risen > DIVERGENCE_RISE * lowest
            and risen - lowest > SMOOTHED_MARGIN
        )


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


def _advice(training: Training) -> str:
    """The likely cause of a diverging run and what to do about it."""
    run, config = training.run, training.run.config
    fixes = [f"lower learning_rate (now {config.learning_rate:g}; try {config.learning_rate / 4:g})"]
    if config.warmup_steps == 0:
        fixes.append("add warm-up (warmup_steps about a tenth of the steps)")
    cause = "a learning rate too high for this base"
    if config.quantization == "4bit":
        cause += " (a 4-bit base is noisier and wants a lower rate)"
    roll = ""
    if training.best is not None:
        roll = f" or roll back to the weights of step {training.best.step}: run.rollback() or %lora rollback {run.name}"
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
