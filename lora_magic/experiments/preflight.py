"""A measured pre-flight: a few real training steps of the planned size on this machine.

The steps go through the same path as a run (the kernel's shared base model, PEFT, TRL's trainer),
on synthetic examples that fill max_length, in a throw-away run store. The base model stays loaded
for the run that follows; the adapter and the run record are removed.

Peak memory on a GPU is torch's peak allocation during the steps, the loaded model included. On a
CPU it is the size of the loaded weights plus how far the process's resident memory (RSS) rose above
its level before the steps (Linux: the kernel's high-water mark, reset before the steps).
"""

from __future__ import annotations

import gc
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import RunConfig
from ..core.errors import RunError
from ..core.events import COMPLETED, LOG
from ..core.hardware import device as device_of
from ..model.session import session
from ..training import start
from ..training.trainer import manager

# The first step warms up and allocates the optimizer state; the time of a step is the median of the
# others, which a busy machine disturbs least.
STEPS = 4
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Measurement:
    """Real training steps of batch_size × max_length tokens on this machine."""

    peak_bytes: float  # on a GPU torch's peak allocation; on a CPU the weights + the steps' peak RSS rise
    seconds_per_step: float | None  # per optimizer step (grad_accum micro-batches); None if they failed
    device: str
    error: str | None = None


def measure(config: RunConfig) -> Measurement:
    # the trainer's libraries are imported before the baseline: their memory is the process's
    import datasets  # noqa: F401
    import torch
    from trl import SFTTrainer  # noqa: F401

    device = device_of(config.device)
    if device == "cpu" and not STATUS.is_file():
        raise RunError("measuring memory on the CPU needs Linux (/proc); the estimate stands without it")
    manager().ensure_idle()
    shared = session()
    shared.ensure_base(config)
    weights = shared.base_model.get_memory_footprint()
    _touch(shared.base_model)
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        rss_before = _status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    run = _train_steps(config)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = weights + _status_bytes("VmHWM") - rss_before
    if run.status != COMPLETED:
        return Measurement(peak, None, device, error=run.error)
    times = [event["elapsed"] for event in run.history.of(LOG)]
    per_step = statistics.median(b - a for a, b in itertools.pairwise(times)) * config.grad_accum
    return Measurement(peak, per_step, device)


def _train_steps(config: RunConfig) -> Any:
    """The finished run of STEPS steps of full-length examples. It leaves no trace in the run store
    or the session."""
    filler = " ".join(["lamp"] * config.max_length)  # at least one token a word: truncated to max_length
    records = [
        {"instruction": f"Describe lamp {i}.", "response": filler} for i in range(config.batch_size * STEPS)
    ]
    name = f"preflight-{time.strftime('%Y%m%d-%H%M%S')}"
    steps_config = config.replace(
        name=name,
        data=records,
        eval_data=None,
        eval_fraction=0.0,
        max_examples=None,
        dedup="none",
        template="alpaca",
        instruction_field="instruction",
        input_field="input",
        response_field="response",
        steps=STEPS,
        grad_accum=1,
        save_every=0,
        probes=[],
    )
    last = manager().last
    with tempfile.TemporaryDirectory() as store:
        try:
            return start.train(steps_config, runs_dir=store).wait()
        finally:
            if name in session().adapters:
                session().delete_adapter(name)
            manager().active = manager().last = last  # the kernel's last run is still the user's


def _touch(model) -> None:
    """Read every page of the weights, so weights that loading only mapped from the file are resident
    before the baseline is taken and not counted twice."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.detach().reshape(-1)[::1024].float().sum()


def _status_bytes(key: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RunError(f"{STATUS} has no {key}")
