"""What a run measured, read from its folder alone (no model, no torch): the numbers that `%lora
diff` sets side by side and a sweep's table has a row of.

Losses, speed and memory come from the run's events, so a run still training or one that failed
shows what it logged; the held-out scores come from its evaluation.json (evaluation.py).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from .events import EVAL, LOG, current
from .runs import RunStore

EVALUATION_FILE = "evaluation.json"  # in the run folder: the latest %lora eval, or evaluate: true
SCORES = ("token_f1", "rouge_l", "exact_match", "terminated", "answer_tokens", "perplexity")
Curve = list[tuple[int, float]]


def events(store: RunStore, name: str) -> list[dict[str, Any]]:
    """The run's events of its one history (a resumed run's superseded ones left out)."""
    return current(store.events(name)[0])


def curve(run_events: list[dict[str, Any]], kind: str = LOG) -> Curve:
    """(step, loss) of the train losses (LOG) or the eval losses (EVAL)."""
    key = "loss" if kind == LOG else "eval_loss"
    return [(e["step"], e[key]) for e in run_events if e["type"] == kind and _number(e.get(key)) is not None]


def evaluation(store: RunStore, name: str) -> dict[str, Any]:
    """The run's evaluation.json, or {} when it has none (or one that cannot be read)."""
    try:
        data = json.loads(store.file(name, EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measurements(store: RunStore, name: str) -> dict[str, Any]:
    """The run's status, size and measurements, and its own held-out scores if it was evaluated."""
    record, run_events = store.read(name), events(store, name)
    logs = [e for e in run_events if e["type"] == LOG]
    train, evals = curve(run_events, LOG), curve(run_events, EVAL)
    # the first step is left out of the speed: it includes the warm-up of the kernels
    speeds = [e["tokens_per_second"] for e in logs[1:] if _number(e.get("tokens_per_second")) is not None]
    peaks = [e["peak_memory_mb"] for e in logs if _number(e.get("peak_memory_mb")) is not None]
    started, ended = _number(record.get("started")), _number(record.get("finished") or record.get("updated"))
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


def loss_before_training(evals: list[tuple[int, float]]) -> float | None:
    """The eval loss of the evaluation at step 0 (the base's own), if the run evaluated there."""
    return evals[0][1] if evals and evals[0][0] == 0 else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
