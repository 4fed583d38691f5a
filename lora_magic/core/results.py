"""What a run measured, read from its folder alone (no model, no torch): its history, its curves,
and the numbers that `%lora diff` sets side by side and a sweep's table has a row of.

Losses, speed and memory come from the run's events, so a run still training or one that failed
shows what it logged; the held-out scores come from its evaluation.json (model/scoring.py).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from .events import EVAL, LOG, Curve, History
from .format import number
from .store import RunStore

EVALUATION_FILE = "evaluation.json"  # in the run folder: the latest %lora eval, or evaluate: true
SCORES = ("token_f1", "rouge_l", "exact_match", "terminated", "answer_tokens", "perplexity")
SMOOTHING = 0.8  # of the train loss's moving average, wherever it is drawn


def history(store: RunStore, name: str) -> History:
    """The run's events of its one history (a resumed run's superseded ones left out)."""
    return History(store.events(name)[0])


def evaluation(store: RunStore, name: str) -> dict[str, Any]:
    """The run's evaluation.json, or {} when it has none (or one that cannot be read)."""
    try:
        data = json.loads(store.file(name, EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measurements(store: RunStore, name: str) -> dict[str, Any]:
    """The run's status, size and measurements, and its own held-out scores if it was evaluated."""
    record, events = store.read(name), history(store, name)
    logs = events.of(LOG)
    train, evals = events.curve(LOG), events.curve(EVAL)
    # the first step is left out of the speed: it includes the warm-up of the kernels
    speeds = [e["tokens_per_second"] for e in logs[1:] if number(e.get("tokens_per_second")) is not None]
    peaks = [e["peak_memory_mb"] for e in logs if number(e.get("peak_memory_mb")) is not None]
    started, ended = number(record.get("started")), number(record.get("finished") or record.get("updated"))
    scores = (evaluation(store, name).get("metrics") or {}).get(name) or {}
    return {
        "status": record["status"],
        "steps": f"{record.get('step') or 0}/{record.get('total_steps') or '?'}",
        "train_examples": (record.get("examples") or {}).get("train"),
        "trainable_params": record.get("trainable_params"),
        "wall_seconds": ended - started if started is not None and ended is not None else None,
        "tokens_per_second": statistics.median(speeds) if speeds else None,
        "peak_memory_mb": max(peaks, default=None),
        "first_loss": train[0][1] if train else None,
        "final_loss": train[-1][1] if train else None,
        "first_eval_loss": loss_before_training(evals),
        "final_eval_loss": evals[-1][1] if evals else None,
        "best_eval_loss": min(loss for _, loss in evals) if evals else None,
        **{key: scores.get(key) for key in SCORES},
    }


def loss_before_training(evals: Curve) -> float | None:
    """The eval loss of the evaluation at step 0 (the base's own), if the run evaluated there."""
    return evals[0][1] if evals and evals[0][0] == 0 else None


def smooth(values: list[float], smoothing: float = SMOOTHING) -> list[float]:
    """Exponential moving average, debiased so the first points aren't pulled towards zero."""
    average = MovingAverage(smoothing)
    return [average.add(value) for value in values]


class MovingAverage:
    """`smooth` one value at a time, for a curve that grows (the live chart, the trainer's watch)."""

    def __init__(self, smoothing: float = SMOOTHING):
        self.smoothing, self.average, self.count = smoothing, 0.0, 0

    def add(self, value: float) -> float:
        """Take the next value; the smoothed value at it."""
        self.count += 1
        self.average = self.smoothing * self.average + (1 - self.smoothing) * value
        return self.average / (1 - self.smoothing**self.count)
